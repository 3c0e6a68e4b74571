"""gridwatch: IoT sensor ingestion and graded smart alerts for a district's community grids."""

__version__ = "0.1.0"
