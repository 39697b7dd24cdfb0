"""``python -m dbqueue.cli``: the `dbqueue` command."""

from . import main

main()
