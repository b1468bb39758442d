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
BATCH_PNGS = ["train_time.png", "latency.png", "accuracy.png", "energy.png", "accuracy_per_epoch.png"]
ACCUM_PNGS = ["train_time.png", "latency.png", "energy.png", "accuracy_per_epoch.png", "accum_vs_true.png"]


def _parse(*overrides: str):
    return studies.parse(argparse.Namespace(overrides=list(overrides), config=CONFIG, runs_dir="runs"))


def test_points_of_each_study() -> None:
    study, _, base = _parse("study=batch", "model=mlp1")
    assert [p.batch_size for p in studies.plan(study, base)] == [1, 16, 64, 128]
    study, _, base = _parse("study=batch")  # the default CNN: the CNN write-up's sizes
    assert [p.batch_size for p in studies.plan(study, base)] == [32, 64, 128, 256, 512, 1024]
    study, _, base = _parse("study=accum", "bs=128", "accums=1 2 4 8")
    points = studies.plan(study, base)
    assert [(p.name, p.effective, p.kind) for p in points] == [
        ("b128", 128, "batch"), ("b256", 256, "batch"), ("b512", 512, "batch"), ("b1024", 1024, "batch"),
        ("b128x2", 256, "accum"), ("b128x4", 512, "accum"), ("b128x8", 1024, "accum")]


def test_norm_study_trains_each_point_with_both_norms_both_lr_arms_and_every_seed() -> None:
    study, _, base = _parse("study=norm", "arms=rule fixed", "seeds=42 43")
    points = studies.plan(study, base)
    per_seed = ["b128", "b1024", "b128x8", "b1024-fixed", "b128x8-fixed",
                "b128-bn", "b1024-bn", "b128x8-bn", "b1024-bn-fixed", "b128x8-bn-fixed"]
    # seed by seed; b128-fixed is b128 (the fixed LR is the rule's LR at lr_ref_batch 128), so it is left out
    assert [p.name for p in points] == [f"{n}-s42" for n in per_seed] + [f"{n}-s43" for n in per_seed]
    configs = {p.name: studies.point_config(base, p, study, Path("out")) for p in points}
    assert configs["b128x8-bn-s43"].norm == "batch" and configs["b128x8-bn-s43"].seed == 43
    assert configs["b128x8-s42"].effective_batch == configs["b1024-s42"].effective_batch == 1024
    assert configs["b1024-s42"].scaled_lr == pytest.approx(0.003 * 8 ** 0.5)  # our rule: sqrt of 1024/128
    assert configs["b1024-fixed-s42"].scaled_lr == configs["b128-s42"].scaled_lr == 0.003  # the write-ups' fixed LR
    assert {p.group for p in points if p.name.startswith("b128x8-bn-fixed")} == {"b128x8-bn-fixed"}


def test_batch_norm_replaces_every_group_norm_only_where_asked() -> None:
    from torch import nn

    from digitrec import config
    from digitrec.models import model_from_config

    group = model_from_config(config.load(CONFIG, {"width": 8}))
    batch = model_from_config(config.load(CONFIG, {"width": 8, "norm": "batch"}))
    assert sum(isinstance(m, nn.GroupNorm) for m in group.modules()) == 7
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 7
    assert not any(isinstance(m, nn.GroupNorm) for m in batch.modules())
    with pytest.raises(UserError, match="norm=batch applies to gn_cnn, gn_m3, gn_m5, gn_m7, not to model 'mlp1'"):
        config.load(CONFIG, {"model": "mlp1", "norm": "batch"})
    with pytest.raises(UserError, match="norm must be group, group_ws or batch, got 'layer'"):
        config.load(CONFIG, {"norm": "layer"})


def _groups(rows: list[tuple[str, int, int, str, float]]):
    """Point groups as studies.by_group makes them, from (group, batch_size, accum, arm, accuracy) per seed."""
    frame = pd.DataFrame([{
        "group": g, "batch_size": b, "accum": a, "effective_batch": b * a, "norm": "group", "arm": arm,
        "accuracy": acc, "val_acc_per_epoch": f"{acc}", **{k: 1.0 for k in studies.MEASURED if k != "accuracy"}}
        for g, b, a, arm, acc in rows])
    return studies.by_group(frame)


def test_verdicts_weigh_each_difference_against_the_seed_noise() -> None:
    groups = _groups([("b128", 128, 1, "rule", 0.990), ("b128", 128, 1, "rule", 0.992),
                      ("b1024", 1024, 1, "rule", 0.985), ("b1024", 1024, 1, "rule", 0.987),
                      ("b128x8", 128, 8, "rule", 0.9905), ("b128x8", 128, 8, "rule", 0.9915)])
    row = groups.set_index("group").loc["b128x8"]
    assert row["accuracy"] == pytest.approx(0.991) and row["seeds"] == 2 and row["accuracies"] == "99.05% 99.15%"
    lines = studies.accumulation_verdicts(groups)
    # pooled seed sd = sqrt(mean(2e-6, 2e-6, 5e-7)) = 1.22e-3; noise = 2 x sd x sqrt(1/2 + 1/2) = 0.24 points
    assert lines[0].startswith("- b128x8 vs its micro-batch alone (b128): 99.10% vs 99.10%, +0.00 points: **within noise**")
    assert "noise: 2 standard errors = 0.24 points" in lines[0]
    assert lines[1].startswith("- b128x8 vs the true batch (b1024): 99.10% vs 98.60%, +0.50 points: **higher**")
    one_seed = _groups([("b128", 128, 1, "rule", 0.99), ("b128x8", 128, 8, "rule", 0.98)])
    assert studies.accumulation_verdicts(one_seed) == [
        "- b128x8 vs its micro-batch alone (b128): 98.00% vs 99.00%, -1.00 points: one seed, no noise estimate (give SEEDS=)"]


def _norm_study_rows() -> pd.DataFrame:
    """A norm study's sweep.csv, the columns the figures read: 128, 128 x 8 and 1024, both norms, both LR arms
    (the fixed arm at 128 is the rule's run, so it has no point there), two seeds."""
    rows = []
    for seed in (42, 43):
        for norm in ("group", "batch"):
            for arm in ("rule", "fixed"):
                for bs, accum in ((128, 1), (1024, 1), (128, 8)):
                    if arm == "fixed" and bs * accum == 128:
                        continue
                    point = studies.Point("", bs, accum, norm, arm, seed)
                    group = f"b{bs}" + (f"x{accum}" if accum > 1 else "") + ("-bn" if norm == "batch" else "") + \
                        ("-fixed" if arm == "fixed" else "")
                    rows.append({"point": f"{group}-s{seed}", "group": group, "series": point.series, "kind": point.kind,
                                 "norm": norm, "arm": arm, "seed": seed, "batch_size": bs, "accum": accum,
                                 "effective_batch": bs * accum, "epochs": 2, "holdout_rows": 8400,
                                 "accuracy": 0.993 + 0.0005 * (seed - 42) + 0.001 * (accum == 1) * (bs == 128),
                                 "val_acc_per_epoch": "0.9700 0.9930",
                                 **{k: 100.0 + seed for k in studies.MEASURED if k != "accuracy"}})
    return pd.DataFrame(rows).sort_values("effective_batch", kind="stable")


def test_the_accumulation_figure_takes_its_settings_and_seeds_from_the_rows() -> None:
    from digitrec import plots

    frame = _norm_study_rows()
    panels = plots.setting_panels(frame, "accuracy", 100, band_half=0.15)
    assert [p.title for p in panels] == ["GroupNorm", "BatchNorm"]
    group = panels[0]
    assert group.categories == ["batch 128", "128 x 8\naccumulated", "true batch\n1024"]
    assert list(group.arms) == ["our LR rule", "the write-ups' fixed LR"]
    rule, fixed = group.arms.values()
    assert rule == [pytest.approx([99.4, 99.45]), pytest.approx([99.3, 99.35]), pytest.approx([99.3, 99.35])]
    assert fixed[0] == [] and fixed[1] == pytest.approx([99.3, 99.35])  # no fixed point at 128: it is the rule's run
    assert group.band == pytest.approx((99.425 - 0.15, 99.425 + 0.15))  # around batch 128's mean


def test_a_study_is_drawn_again_from_its_csv(tmp_path: Path) -> None:
    fileio.write_text(tmp_path / "sweep.csv", _norm_study_rows().to_csv(index=False))
    fileio.write_text(tmp_path / "sweep.md", "# Sweep: STUDY=norm\n\nSettings: model gn_cnn width 16, 2 epochs.\n")
    assert studies.redraw(tmp_path) == [name.removesuffix(".png") for name in ACCUM_PNGS]
    for png in ACCUM_PNGS:
        assert (tmp_path / png).read_bytes().startswith(PNG) and (tmp_path / png).stat().st_size < 200_000, png
    with pytest.raises(UserError, match="no sweep.csv to draw from"):
        studies.redraw(tmp_path / "elsewhere")
    one_seed = _norm_study_rows().query("seed == 42")  # no seed spread, so no noise band
    fileio.write_text(tmp_path / "sweep.csv", one_seed.to_csv(index=False))
    assert studies.redraw(tmp_path) == [name.removesuffix(".png") for name in ACCUM_PNGS]


@pytest.mark.parametrize("overrides, message", [
    (["study=size"], "STUDY must be batch, accum, norm"),
    (["study=batch", "bs=64"], "belong to STUDY=accum or norm"),
    (["study=accum", "batch_sizes=8 16"], "belongs to STUDY=batch"),
    (["study=batch", "accum=4"], "a sweep sets accum per point"),
    (["batch_sizes=8 x"], "whole numbers"),
    (["fold=7"], "fold must be all or 0..4"),
    (["arms=rule scaled"], "ARMS must be rule, fixed or both"),
    (["seeds=1 1"], "SEEDS must differ"),
    (["study=norm", "norm=batch"], "STUDY=norm trains both norms"),
    (["study=norm", "model=mlp1"], "norm=batch applies to gn_cnn"),
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
    for png in BATCH_PNGS:
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
    for png in ACCUM_PNGS:
        assert (workdir / "sweep" / png).read_bytes().startswith(PNG), png


@pytest.mark.slow
def test_norm_sweep_with_seeds_writes_means_and_verdicts(workdir: Path, demo_dir: Path) -> None:
    result = run_cli(["sweep", "--config", CONFIG, f"data={demo_dir}", "study=norm", "bs=8", "accums=2", "seeds=1 2",
                      "width=8", "limit=200", "folds=2", "epochs=1", "repeats=3", "warmup=1", "progress=false",
                      "out=sweep", "threads=1"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "12 epochs of training in all; estimated" in result.stdout and "12/12 epochs of the sweep done" in result.stdout
    frame = pd.read_csv(workdir / "sweep" / "sweep.csv")
    assert len(frame) == 12 and set(frame["seed"]) == {1, 2} and set(frame["norm"]) == {"group", "batch"}
    table = (workdir / "sweep" / "sweep.md").read_text()
    assert "| b8x2-bn | 8 x 2 | batch |" in table and "## Accumulation against its rivals" in table
    assert "- b8x2 vs the true batch (b16)" in table and "- b8x2-bn vs its micro-batch alone (b8-bn)" in table
