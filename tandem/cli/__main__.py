"""``python -m tandem.cli`` is the ``tandem`` command."""

from tandem.cli import main

main()
