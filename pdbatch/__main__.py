"""``python -m pdbatch``: the same as the ``pdbatch`` command."""

import sys

from .cli import main

sys.exit(main())
