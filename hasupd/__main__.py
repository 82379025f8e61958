"""``python -m hasupd`` is ``hasupd``."""

import sys

from hasupd.cli.daemon import main

sys.exit(main())
