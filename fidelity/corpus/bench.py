"""`python -m fidelity.corpus.bench`: see `fidelity.commands.corpus_throughput`."""

import sys

from ..commands.corpus_throughput import main

if __name__ == "__main__":
    sys.exit(main())
