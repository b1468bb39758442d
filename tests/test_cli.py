"""The command line: the `digitrec` console command is installed and answers --help, and each command's
--help lists only the options it takes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from digitrec import cli


def test_the_console_command_runs_help() -> None:
    command = Path(sys.executable).parent / "digitrec"
    assert command.is_file(), f"{command} is missing: pyproject.toml declares it; `make setup` installs it"
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: digitrec ")
    assert all(name in done.stdout for name in cli.COMMANDS)


@pytest.mark.parametrize("command, has, lacks", [
    ("train", ["--config", "KEY=VALUE"], ["--run", "--tta"]),
    ("predict", ["--run", "--runs-dir", "--tta", "KEY=VALUE", "TTA=0"], ["--config"]),
    ("compare", ["--runs-dir", "KEY=VALUE"], ["--config", "--tta", "--run "]),
    ("download", ["--debug"], ["--config", "--run", "--tta", "KEY=VALUE"]),
    ("scores", ["--config"], ["--run", "KEY=VALUE"]),
])
def test_each_command_lists_only_its_options(command: str, has: list[str], lacks: list[str],
                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in has) and not any(option in text for option in lacks)


def test_an_option_another_command_takes_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--tta"])
    assert done.value.code == 2 and "unrecognized arguments: --tta" in capsys.readouterr().err
