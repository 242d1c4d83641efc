"""`python -m windowloader`: the same command as the `windowloader` console script."""

from windowloader.cli import main

raise SystemExit(main())
