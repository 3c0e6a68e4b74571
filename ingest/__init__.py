"""ingest stage of gridwatch."""
