"""``python -m commlib`` runs the command line."""

import sys

from commlib.cli import main

sys.exit(main())
