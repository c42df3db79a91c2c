"""``python -m skdeepcluster``: the command line of :mod:`skdeepcluster.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
