"""End to end through the Makefile: `make train` on a small stratified subset writes a valid submission,
metrics and a complete run folder; `make predict` rebuilds the same submission from the saved weights."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REAL_ZIP, ROOT, clean_env
from digitrec import fileio
from digitrec.submission import read_submission


def make(target: str, cwd: Path, *settings: str) -> subprocess.CompletedProcess:
    command = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), target, f"PYTHON={sys.executable}", *settings]
    return subprocess.run(command, cwd=cwd, env=clean_env(cwd), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_make_train_then_predict(workdir: Path) -> None:
    # the real archive when it is here, else no DATA at all: the pipeline falls back to the demo set
    data = [f"DATA={REAL_ZIP}"] if REAL_ZIP.is_file() else []
    result = make("train", workdir, *data, "LIMIT=3000", "FOLDS=2", "EPOCHS=1", "BS=128", "ACCUM=8",
                  "NAME=e2e", "ARGS=progress=false tta=false")  # nine views of 28000 test rows: minutes in fp32
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BS 128 x ACCUM 8 = 1024" in result.stdout
    assert "fold 0 epoch  1/1" in result.stdout and "fold 1 epoch  1/1" in result.stdout
    submission = Path(workdir, result.stdout.strip().splitlines()[-1].removeprefix("submission: "))
    assert submission.is_file() and submission.parent.name == "submissions"

    (run,) = (workdir / "runs").iterdir()
    assert run.name.startswith("e2e-")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["batch_size"], saved["accum"], saved["limit"], saved["folds"]) == (128, 8, 3000, 2)
    record = fileio.read_json(run / "data.json")
    test_rows = record["test_rows"]
    frame = read_submission(submission, expected_rows=test_rows)  # header, ids 1..M once, labels 0..9
    assert record["demo"] == (not REAL_ZIP.is_file()) == submission.name.endswith(".DEMO.csv")

    metrics = fileio.read_json(run / "metrics.json")
    rows = min(3000, record["train_rows"])
    assert metrics["oof"]["rows"] == rows and metrics["folds_done"] == [0, 1]
    assert 0.0 <= metrics["oof"]["accuracy"] <= 1.0 and len(metrics["oof"]["confusion"]) == 10
    assert sum(map(sum, metrics["oof"]["confusion"])) == rows
    folds = np.load(run / "folds.npz")
    assert len(folds["rows"]) == rows and set(folds["fold_of"]) == {0, 1}
    for k in (0, 1):
        fold = run / f"fold{k}" / "m0"
        assert not (fold / "resume.pt").exists()  # removed once the fold is done
        assert len(fileio.read_json(fold / "history.json")) == 1
        assert np.load(fold / "test_probs.npy").shape == (test_rows, 10)
        fileio.read_torch(fold / "weights.pt")  # a plain state_dict, loadable with weights_only=True
    assert np.load(run / "oof_probs.npy").shape == (rows, 10)

    # the same make train again finds the run complete and starts a new one, never writing over it
    rebuilt = make("predict", workdir)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]
    assert submission.read_bytes() == Path(workdir, rebuilt.stdout.strip().splitlines()[-1].split(": ")[1]).read_bytes()
    assert frame.equals(read_submission(submission, expected_rows=test_rows))
