"""alerts stage of gridwatch."""
