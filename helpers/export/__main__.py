"""``python -m helpers.export``: see :mod:`helpers.export.cli`."""
import sys

from .cli import main

sys.exit(main())
