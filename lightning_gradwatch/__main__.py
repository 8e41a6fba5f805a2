"""``python -m lightning_gradwatch``: the ``gradwatch`` command."""

import sys

from lightning_gradwatch.cli import main

if __name__ == "__main__":
    sys.exit(main())
