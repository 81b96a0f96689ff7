"""``python -m lmxray ...``: the same as the ``lmxray`` command."""

from .cli import main

main()
