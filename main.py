"""The specification's entry point: `python main.py --max-length 256 --stride 64 --batch-size 2`.

It is the `windowloader` command (also `python -m windowloader`), run from the repository root.
"""

from windowloader.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
