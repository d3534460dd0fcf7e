"""What every command-line entry point shares: one-line errors, exit codes, logging."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import FidelityError

log = logging.getLogger("fidelity")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")


def setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command body, turning FidelityError into one line on stderr and exit 2."""
    try:
        return body()
    except FidelityError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
