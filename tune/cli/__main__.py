"""``python -m tune.cli``: the ``s2ap`` command line."""

from tune.cli import console_main

console_main()
