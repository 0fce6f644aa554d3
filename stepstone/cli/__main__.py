"""``python -m stepstone.cli``: the same as the ``stepstone`` command."""

from stepstone.cli import main

main()
