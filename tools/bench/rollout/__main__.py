"""``python -m edgerec.tools.bench.rollout``: see :mod:`edgerec.tools.bench.rollout.cli`."""

import sys

from edgerec.tools.bench.rollout.cli import main

sys.exit(main())
