"""``python -m tune.cli``: the ``s2ap`` command line."""

import sys

from tune.cli import main

sys.exit(main())
