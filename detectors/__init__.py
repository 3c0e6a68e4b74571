"""detectors stage of gridwatch."""
