"""sim stage of gridwatch."""
