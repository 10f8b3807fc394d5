"""``python -m helpers.api ...``: the OpenAI-compatible server (see :func:`helpers.api.launcher.main`)."""
import sys

from .launcher import main

sys.exit(main())
