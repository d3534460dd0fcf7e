"""`python -m fidelity.faults`: see `fidelity.commands.faults`."""

import sys

from ..commands.faults import main

if __name__ == "__main__":
    sys.exit(main())
