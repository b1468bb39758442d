"""A run's learning curves (curves.png): which nets' histories are gathered, from history.json or from the
resume point of a net still training; evaluate draws them for an unfinished run and says it is unfinished;
a figure that fails after training is a warning; log axes carry plain numbers."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from digitrec import config, evaluation, fileio, plots, runs
from digitrec.errors import UserError

PNG = b"\x89PNG\r\n\x1a\n"


def history(epochs: int, total: int, refit: bool = False, shift: float = 0.0) -> list[dict]:
    """engine.epoch_record's records of the first `epochs` of `total` of a net that learns as a small CNN does
    (a refit holds no row out); `shift` sets one net apart from the next."""
    records = []
    for e in range(1, epochs + 1):
        record = {"epoch": e, "train_loss": 0.55 + 0.7 / e + shift, "train_acc": 0.99 - 0.1 / e}
        if not refit:
            record.update(val_loss=0.5 + 0.3 / e + shift, val_acc=0.996 - 0.03 / e ** 1.5 - shift / 5)
        record.update(lr=0.003 * min(1.0, e / 2) * (0.5 + 0.5 * math.cos(math.pi * e / (total + 1))), seconds=1.0)
        records.append(record)
    return records


def fake_run(root: Path, cfg: config.Config, finished: dict, training: dict) -> Path:
    """A run folder as training leaves it, written by hand: {(fold, member, round): epochs} of finished nets
    (history.json, done.json) and of nets in training (resume.pt with its history)."""
    run = root / "runs" / "fake-20261206-120000"
    fileio.write_text(run / "config.yaml", cfg.to_yaml())
    fileio.write_json(run / "data.json", {"source": "hand-made", "demo": True, "content_hash": "0", "train_rows": 10,
                                          "test_rows": 10})
    for (fold, member, round_), epochs in finished.items():
        net = runs.unit_dir(run, fold, member, round_)
        fileio.write_json(net / "history.json", history(epochs, epochs, fold is None, 0.01 * member + 0.003 * (fold or 0)))
        fileio.write_json(net / "done.json", {"seconds": 1.0, "epochs": epochs, "nets_per_step": 1})
    for (fold, member, round_), epochs in training.items():
        records = history(epochs, cfg.epochs, fold is None, 0.01 * member + 0.003 * (fold or 0))
        fileio.write_torch(runs.unit_dir(run, fold, member, round_) / "resume.pt",
                           {"epoch": epochs, "history": records, "rng": []})
    return run


def test_every_net_of_a_run_is_gathered_with_its_epochs(tmp_path: Path) -> None:
    cfg = dataclasses.replace(config.Config(), folds=3, epochs=6, members=[{}, {"model": "gn_m5"}], pseudo_rounds=1,
                              refit=True, pseudo_epochs=4)
    done = {(k, j, 0): 6 for k in range(3) for j in range(2)}
    done |= {(k, j, 1): 4 for k in range(3) for j in range(2)}
    run = fake_run(tmp_path, cfg, done | {(None, 0, 1): 6}, {(None, 1, 1): 2})
    curves = evaluation.draw_curves(run)
    assert curves.path == run / "curves.png" and curves.path.read_bytes().startswith(PNG)
    got = {(n.fold, n.member, n.round): (len(n.epochs), n.finished) for n in curves.nets}
    assert got == {**{u: (e, True) for u, e in done.items()}, (None, 0, 1): (6, True), (None, 1, 1): (2, False)}
    assert curves.total == 14 and curves.describe() == "13 of 14 nets finished, 1 in training"
    refit = next(n for n in curves.nets if n.fold is None)
    assert "val_acc" not in refit.epochs[0] and "train_loss" in refit.epochs[0]


def test_an_interrupted_run_draws_what_it_has_and_evaluate_says_it_is_unfinished(tmp_path: Path) -> None:
    cfg = dataclasses.replace(config.Config(), folds=3, epochs=5)
    run = fake_run(tmp_path, cfg, {(0, 0, 0): 5}, {(1, 0, 0): 2})  # fold 2 not started
    curves = evaluation.draw_curves(run)
    assert [(n.fold, len(n.epochs), n.finished) for n in curves.nets] == [(0, 5, True), (1, 2, False)]
    assert curves.describe() == "1 of 3 nets finished, 1 in training"
    (run / "curves.png").unlink()
    with pytest.raises(UserError, match=r"not finished \(no metrics.json; 1 of 3 nets finished, 1 in training; "):
        evaluation.evaluate_run(run, evaluation.CostSettings())
    assert (run / "curves.png").read_bytes().startswith(PNG)

    result = run_cli(["evaluate", f"RUN={run}"], tmp_path)
    assert result.returncode == 2 and "1 of 3 nets finished, 1 in training" in result.stderr
    assert "rerun its `make train` to complete it" in result.stderr


def test_a_figure_that_fails_is_one_warning_after_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = fake_run(tmp_path, config.Config(), {}, {})
    fileio.write_bytes(run / "fold0" / "m0" / "resume.pt", b"not a checkpoint")
    evaluation.curves_after_training(run)  # no exception: the run is trained whatever its figure does
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "curves.png not drawn" in caplog.text


def test_log_axes_get_plain_round_numbers() -> None:
    assert plots.log_ticks(150, 230) == [160, 180, 200, 220]  # too narrow for 1-2-5: evenly spaced
    assert plots.log_ticks(40, 600) == [50, 100, 200, 500]
    assert plots.log_ticks(0.5, 2000) == [1, 10, 100, 1000]


@pytest.mark.slow
def test_make_train_ends_by_drawing_the_curves(workdir: Path, demo_dir: Path) -> None:
    result = run_cli(["train", "--config", str(ROOT / "configs" / "default.yaml"), f"data={demo_dir}", "model=mlp1", "limit=200", "folds=2", "fold=0", "epochs=2",
                      "progress=false", "tta=false", "threads=1"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (workdir / "runs").iterdir()
    assert f"learning curves: {run / 'curves.png'}" in result.stdout
    assert (run / "curves.png").read_bytes().startswith(PNG)
