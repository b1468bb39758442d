"""The sweep: its points, its settings, its outputs on a small subset of the demo set, and a rerun that
does no work for finished points."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_cli
from digitrec import fileio, studies
from digitrec.errors import UserError

CONFIG = str(ROOT / "configs" / "default.yaml")
PNG = b"\x89PNG\r\n\x1a\n"
FOUR = ["train_time.png", "latency.png", "accuracy.png", "energy.png", "accuracy_per_epoch.png"]


def _parse(*overrides: str):
    return studies.parse(argparse.Namespace(overrides=list(overrides), config=CONFIG, runs_dir="runs"))


def test_points_of_each_study() -> None:
    study, _, base = _parse("study=batch", "model=mlp1")
    assert [p.batch_size for p in studies.plan(study, base.model)] == [1, 16, 64, 128]
    study, _, base = _parse("study=batch")  # the default CNN: the CNN write-up's sizes
    assert [p.batch_size for p in studies.plan(study, base.model)] == [32, 64, 128, 256, 512, 1024]
    study, _, base = _parse("study=accum", "bs=128", "accums=1 2 4 8")
    points = studies.plan(study, base.model)
    assert [(p.name, p.effective, p.kind) for p in points] == [
        ("b128", 128, "batch"), ("b256", 256, "batch"), ("b512", 512, "batch"), ("b1024", 1024, "batch"),
        ("b128x2", 256, "accum"), ("b128x4", 512, "accum"), ("b128x8", 1024, "accum")]


@pytest.mark.parametrize("overrides, message", [
    (["study=size"], "STUDY must be batch or accum"),
    (["study=batch", "bs=64"], "belong to STUDY=accum"),
    (["study=accum", "batch_sizes=8 16"], "belongs to STUDY=batch"),
    (["study=batch", "accum=4"], "a sweep sets accum per point"),
    (["batch_sizes=8 x"], "whole numbers"),
    (["fold=7"], "fold must be all or 0..4"),
])
def test_settings_mistakes_are_user_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        _parse(*overrides)


def _sweep(workdir: Path, demo_dir: Path, *settings: str):
    return run_cli(["sweep", "--config", CONFIG, f"data={demo_dir}", "model=mlp1", "limit=200", "folds=2",
                    "epochs=2", "repeats=3", "warmup=1", "progress=false", "out=sweep",
                    # one thread: on a busy machine two threads wait on each other (10x slower steps)
                    "threads=1", *settings], workdir)


@pytest.mark.slow
def test_batch_sweep_writes_every_output_and_a_rerun_skips_finished_points(workdir: Path, demo_dir: Path) -> None:
    first = _sweep(workdir, demo_dir, "study=batch", "batch_sizes=8 32")
    assert first.returncode == 0, first.stderr[-2000:]
    out = workdir / "sweep"
    frame = pd.read_csv(out / "sweep.csv")
    assert list(frame["point"]) == ["b8", "b32"] and list(frame["batch_size"]) == [8, 32]
    assert (frame["epochs"] == 2).all() and (frame["rows"] == 200).all() and (frame["holdout_rows"] == 100).all()
    assert all(len(curve.split()) == 2 for curve in frame["val_acc_per_epoch"])
    assert (frame["train_s"] > 0).all() and (frame["latency_b1_us"] > 0).all() and (frame["train_energy_wh"] > 0).all()
    table = (out / "sweep.md").read_text()
    assert "| b8 | 8 x 1 |" in table and "2 epochs, a stratified subset of 200 rows, fold 0 of 2" in table
    for png in FOUR:
        assert (out / png).read_bytes().startswith(PNG), png

    runs_before = sorted(p.name for p in (out / "runs").iterdir())
    records = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}
    again = _sweep(workdir, demo_dir, "study=batch", "batch_sizes=8 32")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 2 and "run folder" not in again.stdout
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs_before
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()} == records

    # killed after training a point but before its row was saved: the finished run is measured, not retrained
    (out / "points" / "b32.json").unlink()
    resumed = _sweep(workdir, demo_dir, "study=batch", "batch_sizes=8 32")
    assert resumed.returncode == 0 and "run folder" not in resumed.stdout and "fold 0 epoch" not in resumed.stdout
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs_before
    assert fileio.read_json(out / "points" / "b32.json")["row"]["run"] in runs_before


@pytest.mark.slow
def test_accum_sweep_sets_accumulation_beside_the_true_batch(workdir: Path, demo_dir: Path) -> None:
    result = _sweep(workdir, demo_dir, "study=accum", "bs=8", "accums=2", "epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    frame = pd.read_csv(workdir / "sweep" / "sweep.csv")
    assert list(frame["point"]) == ["b16", "b8x2"] and list(frame["effective_batch"]) == [16, 16]
    assert list(frame["kind"]) == ["batch", "accum"]
    for png in [*FOUR, "accum_vs_true.png"]:
        assert (workdir / "sweep" / png).read_bytes().startswith(PNG), png
