"""``python -m workers``: the same as ``automl-worker``."""

from workers.main import run

run()
