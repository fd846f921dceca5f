"""``python -m cascade``: the command line."""

from cascade.cli import main

raise SystemExit(main())
