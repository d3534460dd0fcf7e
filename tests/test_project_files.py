"""The project's own instructions stay true: README commands, .ci/run, pixi tasks."""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP_AND_RUN = "bash scripts/setup.sh && .venv/bin/python -m fidelity.compare --layer all"
TEST_COMMAND = "bash scripts/test.sh"


def test_readme_holds_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert SETUP_AND_RUN in readme
    assert TEST_COMMAND in readme


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci
    assert (ROOT / "scripts" / "test.sh").is_file() and (ROOT / "scripts" / "setup.sh").is_file()


def test_pixi_tasks_name_real_modules():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert pixi["pypi-dependencies"]["fidelity"]["path"] == "."
    assert set(pixi["tasks"]) >= {"compare", "test"}
    for name, command in pixi["tasks"].items():
        words = shlex.split(command if isinstance(command, str) else command["cmd"])
        assert words[:2] == ["python", "-m"], name
        assert importlib.util.find_spec(words[2]) is not None, f"pixi task {name}: no module {words[2]}"


def test_pyproject_pins_match_the_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^;\s]+)", requirement)
        if match:
            assert pins.get(match.group(1)) == match.group(2), requirement
