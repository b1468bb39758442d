"""Installing: `make setup` on a Python older than the pins allow stops in one line before it makes anything,
and the project says the same minimum everywhere."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT


def _fake_python(folder: Path, version: str) -> Path:
    """A `python3` that answers every call with `version`, as the version probe asks it."""
    script = folder / f"python{version}"
    script.write_text(f"#!/bin/sh\necho {version}\n")
    script.chmod(0o755)
    return script


def _make_setup(tmp_path: Path, base_python: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "setup", f"VENV={tmp_path / 'venv'}",
                           f"BASE_PYTHON={base_python}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("version", ["3.10", "3.9", "2.7"])
def test_setup_on_an_old_python_stops_in_one_line(tmp_path: Path, version: str) -> None:
    done = _make_setup(tmp_path, str(_fake_python(tmp_path, version)))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr
    assert f"is Python {version}; digitrec needs Python >= 3.11" in errors[0] and "BASE_PYTHON=" in errors[0]
    assert not (tmp_path / "venv").exists()  # nothing made, nothing half-installed


def test_setup_names_a_missing_python(tmp_path: Path) -> None:
    done = _make_setup(tmp_path, str(tmp_path / "no-such-python"))
    assert done.returncode != 0 and "is Python (not found); digitrec needs Python >= 3.11" in done.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.100"])
def test_a_new_enough_python_passes_the_check(tmp_path: Path, version: str) -> None:
    """Compared as versions, not as text (3.100 is newer than 3.11): the check lets it through, and the
    fake Python then fails at the next step, making the venv, which is past what this test is about."""
    done = _make_setup(tmp_path, str(_fake_python(tmp_path, version)))
    assert "needs Python >=" not in done.stderr and "venv/bin/pip" in done.stderr


def test_the_minimum_python_is_the_same_everywhere() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    minimum = re.search(r"^MIN_PYTHON := (\S+)$", makefile, flags=re.MULTILINE).group(1)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={minimum}"' in pyproject
    assert f"Python >= {minimum}" in (ROOT / "README.md").read_text(encoding="utf-8")
