"""``python -m vstar ...`` is the ``vstar`` command (and ``torchrun -m vstar``)."""

import sys

from vstar.experiments.cli import main

sys.exit(main())
