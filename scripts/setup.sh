#!/usr/bin/env bash
# Set up fidelity with pip: a virtual environment in .venv with the pinned packages.
# Idempotent: a second run only checks. Needs Python 3.11 or 3.12 (python3 on PATH,
# or PYTHON=/path/to/python). torch 2.13.0 comes from the CPU wheel these machines
# keep on disk (pip's find-links); on another machine pip fetches it from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=.venv/.fidelity-setup
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromedriver >/dev/null; then
  # Headless Chromium (driven by chromedriver) checks the HTML report in the tests.
  echo "setup: installing Debian packages (chromium, chromium-driver)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! { command -v espeak-ng && command -v sox; } >/dev/null; then
  # espeak-ng speaks the synthetic corpus of the corpus-sweep tests and benchmark; sox converts the shipped clips.
  echo "setup: installing Debian packages (espeak-ng, sox)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "setup: installing Python packages into .venv (a few minutes the first time)" >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
echo "$want" > "$stamp"
echo "setup: done; run .venv/bin/python -m fidelity.compare --help" >&2
