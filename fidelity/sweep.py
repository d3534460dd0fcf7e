"""`python -m fidelity.sweep`: see `fidelity.commands.precision_sweep`."""

import sys

from .commands.precision_sweep import main

if __name__ == "__main__":
    sys.exit(main())
