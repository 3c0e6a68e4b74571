"""storage stage of gridwatch."""
