"""Nothing a user types silently changes or loses a run (issue 24): a prediction with other settings goes to
its own folder and submission, `make submit` picks the newest by its creation record, a rerun with another
tta starts a new run, float labels are named, twin members are refused, and a run folder is locked while a
process trains in it."""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, clean_env, run_cli, train_small_run
from digitrec import commands, config, pipeline, runs
from digitrec.errors import UserError
from digitrec.submission import check_submission, read_submission


def _hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not str(p.relative_to(folder)).startswith(skip)}


@pytest.fixture(scope="module")
def trained(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("predict")
    return (work, *train_small_run(demo_dir, work, "p", limit=120, folds=2, epochs=1, width=8, tta=True))


def test_predict_with_another_tta_leaves_training_outputs_alone(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cfg, result = trained
    run = result.run_dir
    before_run = _hashes(run, skip=(".lock", "predict-"))
    before_sub = result.submission.read_bytes()
    monkeypatch.chdir(work)
    again = pipeline.predict(str(run), runs_dir=cfg.runs_dir, tta=False)
    assert _hashes(run, skip=(".lock", "predict-")) == before_run  # training's files, byte for byte
    assert result.submission.read_bytes() == before_sub
    out = run / "predict-tta0"
    assert config.load(out / "config.yaml").tta is False and config.load(run / "config.yaml").tta is True
    assert (out / "fold0" / "m0" / "test_probs.npy").is_file() and (out / "metrics.json").is_file()
    assert again.submission.name == f"{run.name}.predict-tta0.DEMO.csv" and again.submission != result.submission
    side = commands._sidecar(again.submission)
    assert side["tta"] is False and side["prediction"] == str(out) and side["run"] == str(run)

    # make submit's choice: the newest by creation record, even when an older file was touched since
    os.utime(result.submission, None)
    assert commands.newest_submission(work / "submissions") == again.submission
    described = commands._describe_submission(again.submission)
    assert f"run {run.name}" in described and "predict-tta0" in described and "TTA off" in described


def test_a_rerun_with_another_tta_does_not_resume(trained, caplog: pytest.LogCaptureFixture) -> None:
    work, cfg, result = trained
    (result.run_dir / "metrics.json").rename(result.run_dir / "metrics.json.bak")  # as if interrupted
    try:
        assert runs.find_resumable(cfg) == result.run_dir
        with caplog.at_level(logging.INFO, logger="digitrec.runs"):
            assert runs.find_resumable(config.load(result.run_dir / "config.yaml", ["tta=false"])) is None
        assert "it trains with other settings (tta: True -> False)" in caplog.text
    finally:
        (result.run_dir / "metrics.json.bak").rename(result.run_dir / "metrics.json")


def _submission(path: Path, labels: list[str]) -> Path:
    rows = [f"{i + 1},{label}" for i, label in enumerate(labels)]
    path.write_text("ImageId,Label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("labels, expected", [
    (["3.0", "1.0", "2.0"], "line 2, column Label: '3.0' is not an integer (write it as 3)"),
    (["3", "2.5", "1"], "line 3, column Label: '2.5' is not an integer"),
    (["3", "", "1"], "line 3, column Label: 'nan' is not an integer"),
    (["3", "seven", "1"], "line 3, column Label: 'seven' is not an integer"),
])
def test_float_labels_are_named(tmp_path: Path, labels: list[str], expected: str) -> None:
    path = _submission(tmp_path / "sub.csv", labels)
    with pytest.raises(UserError) as info:
        read_submission(path, expected_rows=3)
    assert str(info.value) == f"{path}: {expected}"


def test_float_labels_through_submit_are_one_line_exit_2(workdir: Path) -> None:
    sub = _submission(workdir / "floats.csv", ["3.0"] * 28000)
    result = run_cli(["submit", f"SUB={sub}", "DRY_RUN=1"], workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {sub}: line 2, column Label: '3.0' is not an integer (write it as 3)"


def test_an_integer_column_passes() -> None:
    import pandas as pd

    check_submission(pd.DataFrame({"ImageId": [1, 2], "Label": [3, 4]}), 2, "x")


def test_members_that_would_train_the_same_net_are_refused() -> None:
    members = "[{model: gn_cnn}, {model: gn_cnn}, {model: gn_cnn, seed: 43}]"  # 42, 43 and 43
    with pytest.raises(UserError) as info:
        config.load(ROOT / "configs" / "default.yaml", [f"members={members}"])
    assert str(info.value) == ("members 1 and 2 would train the identical net (the same settings, seed 43, "
                               "fold_seed 42); give one of them another seed")
    # the same seed on other folds is another net (bagging), as is another setting
    config.load(ROOT / "configs" / "default.yaml", ["members=[{}, {seed: 42, fold_seed: 7}, {seed: 42, width: 16}]"])


def _train_args(demo_dir: Path) -> list[str]:
    return [sys.executable, "-m", "digitrec", "train", "--config", str(ROOT / "configs" / "default.yaml"),
            f"DATA={demo_dir}", "NAME=locked", "width=8", "epochs=40", "limit=300", "folds=2", "tta=false", "progress=false", "threads=1"]


@pytest.mark.slow
def test_a_second_process_on_a_locked_run_stops_and_a_killed_holder_frees_it(demo_dir: Path, workdir: Path) -> None:
    first = subprocess.Popen(_train_args(demo_dir), cwd=workdir, env=clean_env(workdir), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(workdir.glob("runs/*/fold0/m0/resume.pt")):  # an unfinished run a rerun would resume
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no resume point appeared"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # frozen mid-run, holding its lock, however fast the demo set trains
        second = subprocess.run(_train_args(demo_dir), cwd=workdir, env=clean_env(workdir), capture_output=True,
                                text=True, timeout=300)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        (run,) = (workdir / "runs").iterdir()
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {run}: another process (PID {first.pid}) is using this run folder; wait for it to finish, "
            f"or train under another NAME=")
        assert "resuming" not in second.stdout + second.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the OS drops its lock
        first.wait()
    third = subprocess.run(_train_args(demo_dir), cwd=workdir, env=clean_env(workdir), capture_output=True,
                           text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"resuming run {run}" in third.stdout + third.stderr
    assert [p.name for p in (workdir / "runs").iterdir()] == [run.name]
    assert np.isfinite(np.load(run / "oof_probs.npy")).all()
