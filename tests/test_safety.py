"""Safe checkpoints and secrets: a checkpoint carrying pickled code is refused before the code runs; Kaggle
credentials never reach output, files or run folders; a training run writes only runs/, submissions/ and
the data cache input/.cache of its working directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli
from digitrec import config, engine, fileio
from digitrec.errors import UserError
from digitrec.models import load_weights, model_from_config


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' from the internet would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(marker), "epoch": 1}, path)
    return path, marker


def test_crafted_checkpoint_would_run_code(crafted) -> None:
    """The payload is real: an unsafe torch.load runs it (this is what weights_only=True prevents)."""
    path, marker = crafted
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_crafted_checkpoint_is_refused(crafted) -> None:
    path, marker = crafted
    with pytest.raises(UserError, match=r"evil\.pt: refused to load: not a plain tensors-only file"):
        fileio.read_torch(path)
    assert not marker.exists(), "the payload ran"


def test_crafted_weights_refused_by_predict_path(crafted) -> None:
    path, marker = crafted
    with pytest.raises(UserError, match="refused to load"):
        load_weights(torch.nn.Linear(2, 2), path)
    assert not marker.exists()


def test_crafted_resume_point_is_refused_by_training(crafted, tmp_path: Path) -> None:
    """A planted fold<k>/resume.pt stops training with the clear error, before its code can run."""
    path, marker = crafted
    fold_dir = tmp_path / "run" / "fold0"
    fold_dir.mkdir(parents=True)
    (fold_dir / "resume.pt").write_bytes(path.read_bytes())
    cfg = config.load(ROOT / "configs/default.yaml", ["width=8", "epochs=1", "progress=false", "device=cpu"])
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    data = engine.FoldData(images, torch.arange(40) % 10, torch.arange(20), torch.arange(20, 40), images[:8])
    with pytest.raises(UserError, match=r"resume\.pt: refused to load"):
        engine.train_net(cfg, data, 0, "fold 0", fold_dir, torch.device("cpu"))
    assert not marker.exists()


def test_plain_checkpoint_round_trip_and_garbage(tmp_path: Path) -> None:
    model = model_from_config(config.load(None, ["width=8"]))
    fileio.write_torch(tmp_path / "weights.pt", model.state_dict())
    restored = load_weights(model_from_config(config.load(None, ["width=8"])), tmp_path / "weights.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="broken.pt: .*delete it to retrain|broken.pt: refused"):
        fileio.read_torch(tmp_path / "broken.pt")


# ---------------------------------------------------------------- secrets and where files go

TOKEN = "SECRET-TOKEN-4f3a9c2e7b1d"
KEY = "SECRET-KEY-8e6b5d4c3a21"
USER = "secret-user-0c9d8e7f"


@pytest.mark.slow
def test_credentials_never_written_and_writes_stay_in_place(demo_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    home = tmp_path / "home"
    scratch = tmp_path / "scratch"
    for folder in (work, home / ".kaggle", scratch):
        folder.mkdir(parents=True)
    planted = {home / ".kaggle" / "kaggle.json": f'{{"username": "{USER}", "key": "{KEY}"}}',
               home / ".kaggle" / "access_token": TOKEN}
    for path, text in planted.items():
        path.write_text(text)
    result = run_cli(["train", "--config", str(ROOT / "configs/default.yaml"), f"DATA={demo_dir}", "NAME=secret",
                      "width=8", "epochs=1", "folds=2", "limit=200", "progress=false"], work,
                     KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY, KAGGLE_API_TOKEN=TOKEN,
                     KAGGLE_CONFIG_DIR=str(home / ".kaggle"), HOME=str(home), TMPDIR=str(scratch))
    assert result.returncode == 0, result.stderr[-2000:]

    written = sorted(p for p in work.rglob("*") if p.is_file())
    assert written, "the run wrote nothing?"
    for secret in (TOKEN, KEY, USER):
        assert secret not in result.stdout and secret not in result.stderr
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"{secret} leaked into {path}"

    # only the run folder, the submission and the data cache; nothing in HOME or the temp folder
    tops = {p.relative_to(work).parts[0] for p in written}
    assert tops == {"runs", "submissions", "input"}, tops
    assert {p.relative_to(work).parts[1] for p in written if p.relative_to(work).parts[0] == "input"} == {".cache"}
    assert sorted(p for p in home.rglob("*") if p.is_file()) == sorted(planted)
    assert list(scratch.iterdir()) == []
    assert not Path(demo_dir, ".cache").exists() and "kaggle-config" not in tops
