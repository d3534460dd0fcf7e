"""`python -m fidelity.gate`: see `fidelity.commands.gate`."""

import sys

from .commands.gate import main

if __name__ == "__main__":
    sys.exit(main())
