"""Crashes and resume: a real SIGKILL (or Ctrl-C) of `python -m digitrec train` at a random moment, then the
same command again, must give exactly the probabilities of an uninterrupted run, in the same run folder."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, clean_env, run_cli

EPOCHS = 6  # long enough that a kill up to 2 s after resuming lands before the run ends


def train_args(demo_dir: Path) -> list[str]:
    # threads pinned: float sums depend on the thread count, which must not vary with the machine's load
    return ["train", "--config", str(ROOT / "configs" / "default.yaml"), f"DATA={demo_dir}", "NAME=resume",
            "width=8", f"epochs={EPOCHS}", "folds=2", "progress=false", "threads=1"]


def start(demo_dir: Path, cwd: Path) -> subprocess.Popen:
    # SIGINT back to its default in the child: a shell that started pytest in the background hands down
    # SIG_IGN, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([sys.executable, "-m", "digitrec", *train_args(demo_dir)], cwd=cwd, env=clean_env(cwd),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_resume_point(proc: subprocess.Popen, cwd: Path, timeout: float = 120) -> None:
    """Poll until the first epoch of the first fold has saved its resume point."""
    deadline = time.monotonic() + timeout
    while not list(cwd.glob("runs/*/fold*/m*/resume.pt")):
        if proc.poll() is not None:
            pytest.fail(f"training ended before any resume point: {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no resume.pt appeared")
        time.sleep(0.02)


def probabilities(cwd: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    (run,) = (cwd / "runs").iterdir()  # one run folder: a resumed run never starts a second one
    return run, np.load(run / "oof_probs.npy"), np.load(run / "test_probs.npy")


@pytest.fixture(scope="module")
def reference(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """The uninterrupted run, as a CLI subprocess like the interrupted ones: an in-process run would
    inherit whatever global torch state earlier tests in this pytest process left behind."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(train_args(demo_dir), cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    _, oof, test = probabilities(cwd)
    assert np.isfinite(oof).all() and oof.shape[1] == 10 and test.shape[0] == 2
    return oof, test


def read_until(proc: subprocess.Popen, text: str) -> str:
    """Read the process's output line by line until a line holding text (the process keeps running)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    pytest.fail(f"{text!r} never appeared: {''.join(seen)[-2000:]} {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_ctrl_c_then_sigkill_then_rerun_resumes_exactly(demo_dir: Path, tmp_path: Path, reference) -> None:
    cwd = tmp_path / "interrupted"
    cwd.mkdir()
    # 1. Ctrl-C right after fold 0's first epoch saved its resume point
    proc = start(demo_dir, cwd)
    wait_for_resume_point(proc, cwd)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, f"rc {proc.returncode}: {err[-2000:]}"
    assert "Traceback" not in err
    assert "interrupted: finished folds and the last finished epoch are saved" in err
    assert "run the same command again to resume" in err
    (run,) = (cwd / "runs").iterdir()
    assert (run / "fold0" / "m0" / "resume.pt").is_file() and not (run / "metrics.json").exists()

    # 2. the same command resumes fold 0 mid-way; SIGKILL it at a random moment after that
    delay = random.uniform(0.0, 2.0)
    proc = start(demo_dir, cwd)
    seen = read_until(proc, "fold 0: resuming after epoch")
    assert f"resuming run {cwd / 'runs' / run.name}" in seen
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run finished before the kill (delay {delay:.2f}s)"
    assert not (run / "metrics.json").exists()

    # 3. and once more: finished folds skipped, the unfinished one resumed, the result bit-for-bit the same
    finished = sorted(p.parent.parent.name for p in run.glob("fold*/m*/done.json"))
    result = run_cli(train_args(demo_dir), cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming run {cwd / 'runs' / run.name}" in result.stdout
    for name in finished:
        assert f"fold {name[-1]}: already finished, skipped" in result.stdout, result.stdout
    resumed, oof, test = probabilities(cwd)
    assert resumed == run, "the resumed run must reuse the interrupted run's folder"
    ref_oof, ref_test = reference
    # CPU, fixed seed: exactly the probabilities of the run that was never interrupted
    assert np.array_equal(oof, ref_oof), f"delay {delay:.2f}s: OOF differs by {np.nanmax(np.abs(oof - ref_oof))}"
    assert np.array_equal(test, ref_test), f"delay {delay:.2f}s: test differs by {np.abs(test - ref_test).max()}"
    assert not list(run.glob("fold*/m*/resume.pt")) and (run / "metrics.json").is_file()


def test_nan_loss_stops_the_fold_with_a_clear_message(demo_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An absurd lr: the loss (training, or validation after the step that blew the weights up) becomes NaN;
    the fold stops with advice, and no resume point, finished fold or submission is written."""
    from digitrec import config, pipeline
    from digitrec.errors import TrainingDiverged, UserError

    assert issubclass(TrainingDiverged, UserError)  # so the CLI prints one line and exits 2
    monkeypatch.chdir(tmp_path)
    base = [f"DATA={demo_dir}", "width=8", "folds=2", "progress=false", "lr=1e20"]
    for extra, which in ((["epochs=1", "limit=200"], "validation"), (["epochs=2", "limit=400"], "training")):
        with pytest.raises(TrainingDiverged) as info:
            pipeline.train(config.load(ROOT / "configs/default.yaml", base + extra))
        assert str(info.value) == (f"fold 0 epoch 1: the {which} loss became nan (training diverged); lower lr "
                                   "(now 1e+20) or raise the effective batch BS x ACCUM (now 128)")
    assert len(list(Path("runs").iterdir())) == 2
    assert not list(Path("runs").rglob("*.pt")) and not list(Path("runs").rglob("done.json"))
    assert not list(Path("runs").rglob("metrics.json")) and not Path("submissions").exists()
