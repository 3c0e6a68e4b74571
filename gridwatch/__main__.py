"""``python -m gridwatch`` runs the CLI."""

from gridwatch.cli import main

raise SystemExit(main())
