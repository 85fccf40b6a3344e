"""``python -m sbnkit``: the command line of :mod:`sbnkit.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
