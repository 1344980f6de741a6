"""Workflow definitions, their execution with scikit-learn, ingestion and profiling."""
