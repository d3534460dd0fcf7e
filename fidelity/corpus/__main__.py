"""`python -m fidelity.corpus`: see `fidelity.commands.corpus`."""

import sys

from ..commands.corpus import main

if __name__ == "__main__":
    sys.exit(main())
