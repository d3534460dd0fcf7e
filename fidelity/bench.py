"""`python -m fidelity.bench`: see `fidelity.commands.bench`."""

import sys

from .commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
