"""What every command-line entry point shares: one-line errors, exit codes, logging.

Exit status: 0 all within budget, 1 a divergence (or regression), 2 bad input (one
line, nothing written), 3 a crash (of fidelity or of the candidate: one line naming
it, the traceback in a crash log), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from ..errors import CandidateCrash, FidelityError

log = logging.getLogger("fidelity")

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_CRASH = 0, 1, 2, 3


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
    """Run a command body: FidelityError is one line and exit 2; any other exception is a crash,
    one line and exit 3 with its traceback in a crash log, never read as a divergence."""
    try:
        return body()
    except FidelityError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - every other failure is a crash, reported as such
        log.debug("crash", exc_info=True)
        where = write_crash_log(prog)
        who = "the candidate crashed" if isinstance(exc, CandidateCrash) else "crashed"
        cause = exc.__cause__ if isinstance(exc, CandidateCrash) and exc.__cause__ else exc
        detail = (str(cause).strip().splitlines() or [""])[0]
        sys.stderr.write(f"{prog}: {who}: {type(cause).__name__}: {detail} (not a divergence; "
                         f"traceback in {where})\n")
        return EXIT_CRASH


def write_crash_log(prog: str) -> Path | str:
    """The current exception's traceback in a new log under <cache>/crashes; its path (or why not)."""
    from ..checkpoints import cache_dir  # torch-heavy; only on a crash

    path = cache_dir() / "crashes" / f"{prog}-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{' '.join(sys.argv)}\n\n{traceback.format_exc()}")
    except OSError as exc:
        return f"<crash log not written: {exc}>"
    return path


def parse_choices(text: str, allowed, flag: str) -> list[str]:
    """A comma list of names, each one of `allowed`; one line naming the unknown ones otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise FidelityError(f"{flag}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return items


def parse_counts(text: str, flag: str) -> list[int]:
    """A comma list of whole numbers, each at least 1."""
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise FidelityError(f"{flag}: {item!r} is not a whole number") from None
        if value < 1:
            raise FidelityError(f"{flag}: each value must be at least 1, got {value}")
        values.append(value)
    return values
