"""``python -m trio_chatruns.server serve`` — same as ``trio-chatruns serve``."""

import sys

from .cli import main

sys.exit(main())
