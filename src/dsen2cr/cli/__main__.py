"""``python -m dsen2cr.cli`` (what ``torchrun -m dsen2cr.cli`` runs)."""

import sys

from dsen2cr.cli import main

sys.exit(main())
