"""``python -m airloop_local.cli``: the same as ``airloop``."""

import sys

from airloop_local.cli import main

sys.exit(main())
