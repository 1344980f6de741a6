"""``python -m workers``: the same as ``automl-worker``."""

from workers.cli import run_worker

run_worker()
