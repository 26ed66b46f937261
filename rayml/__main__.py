"""``python -m rayml``: the same as the ``rayml`` command (used under ``ray job submit --working-dir``)."""

import sys

from rayml.cli import main

sys.exit(main())
