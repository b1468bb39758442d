"""`make runs`: one row per run folder, newest first, with its state (complete, interrupted, training now,
damaged), settings, progress and results; CSV that reads back; the lock probe that tells a live run."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import train_small_run
from digitrec import cli, config, fileio, runs, runtable

SETTINGS = {"limit": 120, "folds": 2, "epochs": 2, "width": 8, "tta": False}


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small complete run: (its config, pipeline.train's result)."""
    return train_small_run(demo_dir, tmp_path_factory.mktemp("table"), "small", **SETTINGS)


def _copy(trained, root: Path, name: str) -> Path:
    """The trained run under root with another name (the timestamp in it orders the table)."""
    run = root / name
    shutil.copytree(trained[1].run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def _interrupt(run: Path, epoch: int | None) -> Path:
    """The run as a kill during fold 1 leaves it: no metrics.json, fold 1 unfinished, with a resume point
    after `epoch` epochs (none: killed before its first epoch ended)."""
    (run / "metrics.json").unlink()
    net = run / "fold1" / "m0"
    shutil.rmtree(net)
    if epoch is not None:
        fileio.write_torch(net / "resume.pt", {"epoch": epoch})
    return run


@pytest.fixture
def folders(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """runs/ in a project of its own (no configs/): a complete, an interrupted, a running-shaped and three
    damaged runs, one of each a day apart, oldest first."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    _copy(trained, root, "small-20260101-100000")
    _interrupt(_copy(trained, root, "small-20260102-100000"), epoch=1)
    _interrupt(_copy(trained, root, "small-20260103-100000"), epoch=None)
    fileio.write_text(_copy(trained, root, "small-20260104-100000") / "metrics.json", "{not json")
    (_copy(trained, root, "small-20260105-100000") / "config.yaml").unlink()
    (_copy(trained, root, "small-20260106-100000") / "data.json").unlink()
    return root


def _states(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["run"], frame["state"]))


def test_each_run_is_one_row_newest_first_with_its_state(folders: Path) -> None:
    frame = runtable.table(folders)
    assert list(frame["run"]) == [f"small-2026010{day}-100000" for day in range(6, 0, -1)]
    assert _states(frame) == {
        "small-20260106-100000": "damaged: no data.json",
        "small-20260105-100000": "damaged: no config.yaml",
        "small-20260104-100000": "damaged: metrics.json unreadable",
        "small-20260103-100000": "interrupted: fold 1 at epoch 0/2",
        "small-20260102-100000": "interrupted: fold 1 at epoch 1/2",
        "small-20260101-100000": "complete",
    }
    interrupted = frame.set_index("run").loc["small-20260102-100000"]
    assert interrupted["nets"] == "1 of 2" and interrupted["epochs"] == "2"
    assert pd.isna(interrupted["oof_%"]) and pd.isna(interrupted["submission"])
    assert "budget" not in frame.columns  # no run has one


def test_a_complete_row_carries_its_settings_and_results(trained, folders: Path) -> None:
    cfg, result = trained
    row = runtable.table(folders).set_index("run").loc["small-20260101-100000"]
    oof = result.metrics["oof"]
    assert row["oof_%"] == round(100 * oof["accuracy"], 3) and row["errors"] == oof["errors"]
    assert row["errors"] == oof["rows"] - round(oof["rows"] * oof["accuracy"])
    assert row["nets"] == "2 of 2" and row["epochs"] == "2"
    saved = config.load(result.run_dir / "config.yaml")  # with the precision the run computed in
    assert row["config"] == "small" and row["device"] == cfg.device and row["precision"] == saved.precision
    assert row["submission"] == result.submission.name and row["demo"] is True
    # against the defaults (the project has no configs/small.yaml); what the run records itself is left out
    assert set(row["overrides"].split()) == {"limit=120", "folds=2", "epochs=2", "width=8", "tta=false"}
    nets = [fileio.read_json(result.run_dir / f"fold{k}" / "m0" / "done.json") for k in range(2)]
    assert row["nets_min"] == round(sum(done["seconds"] for done in nets) / 60, 1)


def test_overrides_are_against_the_projects_config_of_the_same_name(folders: Path) -> None:
    fileio.write_text(Path("configs") / "small.yaml", "name: small\nfolds: 2\nepochs: 2\nwidth: 16\n")
    row = runtable.table(folders).set_index("run").loc["small-20260101-100000"]
    assert set(row["overrides"].split()) == {"limit=120", "width=8", "tta=false"}


def test_a_budget_shows_in_its_own_column(folders: Path) -> None:
    complete, interrupted = folders / "small-20260101-100000", folders / "small-20260102-100000"
    metrics = fileio.read_json(complete / "metrics.json")  # as budget.outcome records a budgeted run's
    fileio.write_json(complete / "metrics.json", {**metrics, "budget": {
        "budget": "30m", "budget_s": 1800.0, "wall_s": 900.0, "wall_fraction_of_budget": 0.5,
        "shed": {"m1": "the pace fell behind"}}})
    fileio.write_text(interrupted / "config.yaml", (interrupted / "config.yaml").read_text() + "budget: 2h\n")
    frame = runtable.table(folders).set_index("run")
    assert frame.loc["small-20260101-100000", "budget"] == "30m, 50% used, shed m1"
    assert frame.loc["small-20260102-100000", "budget"] == "2h"
    assert "budget" not in frame.loc["small-20260102-100000", "overrides"]  # its own column
    assert pd.isna(frame.loc["small-20260103-100000", "budget"])


def test_the_lock_probe_sees_a_holder_and_creates_nothing(folders: Path) -> None:
    run = folders / "small-20260103-100000"
    assert not runs.is_locked(run) and not (run / runs.LOCK).exists()  # no lock file: none made by the probe
    runs.lock(run)  # held by this process, through its own open file; the probe opens another
    try:
        assert runs.is_locked(run) and runs.is_locked(run)  # probing twice leaves the holder holding
        assert _states(runtable.table(folders))[run.name] == "training now: fold 1 at epoch 0/2"
    finally:
        runs.unlock(run)
    assert (run / runs.LOCK).exists() and not runs.is_locked(run)
    assert _states(runtable.table(folders))[run.name] == "interrupted: fold 1 at epoch 0/2"


def test_a_new_folder_held_before_its_config_is_starting(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "small-20260107-100000"
    run.mkdir(parents=True)
    runs.lock(run)
    try:
        assert _states(runtable.table(tmp_path / "runs")) == {run.name: "training now: starting"}
    finally:
        runs.unlock(run)


def test_the_command_prints_the_table_and_csv_that_reads_back(folders: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["runs", "--runs-dir", str(folders)]) == 0
    text = capsys.readouterr().out
    assert "interrupted: fold 1 at epoch 1/2" in text and "damaged: no config.yaml" in text
    assert text.index("small-20260106-100000") < text.index("small-20260101-100000")

    assert cli.main(["runs", "--runs-dir", str(folders), "CSV=1"]) == 0
    back = pd.read_csv(io.StringIO(capsys.readouterr().out))
    expected = runtable.table(folders)
    assert list(back.columns) == list(expected.columns)
    assert list(back["run"]) == list(expected["run"]) and list(back["state"]) == list(expected["state"])
    assert back.loc[back["run"] == "small-20260101-100000", "errors"].item() == expected["errors"].iloc[-1]


def test_the_command_says_when_there_are_no_runs_and_refuses_unknown_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["runs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert cli.main(["runs", "--runs-dir", str(tmp_path / "runs"), "sort=name"]) == 2
    assert "runs takes CSV=1" in capsys.readouterr().err
