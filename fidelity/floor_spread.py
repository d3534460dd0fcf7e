"""`python -m fidelity.floor_spread`: see `fidelity.commands.floor_spread`."""

import sys

from .commands.floor_spread import main

if __name__ == "__main__":
    sys.exit(main())
