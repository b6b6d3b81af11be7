"""``python -m peftshield`` runs the command line."""

import sys

from peftshield.cli import main

sys.exit(main())
