"""`python -m fidelity.precompile`: see `fidelity.commands.precompile`."""

import sys

from .commands.precompile import main

if __name__ == "__main__":
    sys.exit(main())
