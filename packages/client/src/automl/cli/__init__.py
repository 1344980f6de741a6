"""``automl``: the platform from a terminal, on :class:`automl.Client`
(needs the ``cli`` extra: ``pip install "automl-client[cli]"``).

    automl login                       # asks for an API key, checks it, saves it
    automl upload iris.csv --target species --problem-type classification
    automl run --file workflow.json    # creates the workflow, runs it, follows it
    automl status [JOB]                # one job and its nodes, or the latest jobs
    automl logs JOB [--follow]
    automl models [MODEL]
    automl predict DEPLOYMENT rows.csv
    automl download VERSION --format onnx -o model.onnx

Exit codes (docs/cli.md): 0 done; 1 the API refused (its code and message on one
line); 2 bad usage; 3 not logged in or not allowed (401, 403, no credentials);
4 not found; 5 a job or an ingestion failed or was cancelled; 6 a wait timed out;
7 the API could not be reached; 130 interrupted.
"""

from automl.cli.commands import app, main

__all__ = ["app", "main"]
