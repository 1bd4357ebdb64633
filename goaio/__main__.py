"""``python -m goaio echo|bench``: see goaio/_cli.py."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
