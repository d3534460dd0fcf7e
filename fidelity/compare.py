"""`python -m fidelity.compare`: see `fidelity.commands.compare`."""

import sys

from .commands.compare import main

if __name__ == "__main__":
    sys.exit(main())
