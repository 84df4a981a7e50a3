"""``python -m edgerec.tools.faults``: see :mod:`edgerec.tools.faults`."""

import sys

from edgerec.tools.faults.cli import main

sys.exit(main())
