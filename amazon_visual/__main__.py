"""``python -m amazon_visual``: the ``amazon-visual`` command."""

import sys

from amazon_visual.cli import main

if __name__ == "__main__":
    sys.exit(main())
