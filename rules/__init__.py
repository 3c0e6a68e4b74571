"""rules stage of gridwatch."""
