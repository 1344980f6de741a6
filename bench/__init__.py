"""Benchmarks of the database: what the triggers cost, how the ledger scales, and
whether the hot queries' cost stays flat as the tables grow.

Run with ``make bench`` (``python -m bench``); results go to docs/performance.md
and, raw, to bench/results/ (git-ignored). See bench/__main__.py for the flags.
"""
