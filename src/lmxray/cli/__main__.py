"""``python -m lmxray.cli ...``: the same as the ``lmxray`` command."""

from . import main

main()
