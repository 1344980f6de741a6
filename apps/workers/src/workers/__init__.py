"""Background workers: the PostgreSQL job queue, ingestion and workflow execution."""
