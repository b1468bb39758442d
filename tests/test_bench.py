"""`make bench`: a quick run writes its JSON and records it; the regression comparison names exactly
the figures that got worse. No timing is asserted: timings depend on the machine and its load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from digitrec import bench, bench_results, cli, hardware, planner, settings

FIGURES = ("train_img_per_s", "conventional_img_per_s", "speedup", "flop_limit_fraction", "gemm_gflop_s",
           "train_mflop_per_img", "predict_s_per_fold", "predict_img_per_s", "ensemble_s", "ensemble_img_per_s",
           "csv_cold_s", "csv_cached_s", "peak_rss_gib", "conventional_same_precision_img_per_s",
           "speedup_same_precision", "gemm_bf16_gflop_s", "bf16_limit_fraction")


def _record(**figures: float) -> dict:
    base = {"machine": "cpu: test, 2 threads", "quick": False, "demo": False, "batch_size": 128, "accum": 8,
            "folds": 5, "model": "gn_cnn", "precision": "bf16", "gemm_gflop_s": 100.0, "recorded": "2026-01-01 00:00:00"}
    return {**base, **figures}


@pytest.mark.slow
def test_quick_bench_writes_json_and_records(demo_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    # in this process (one interpreter start fewer; the memory run is still a child process), in a temp
    # working directory; small batches keep the quick run short; the demo set stands in for the data
    monkeypatch.chdir(workdir)
    code = cli.main(["bench", "--config", str(ROOT / "configs" / "default.yaml"), f"data={demo_dir}",
                     "quick=1", "record=1", "results=bench.json", "BS=32", "ACCUM=2", "folds=2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    for key in FIGURES:
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["device"] == "cpu" and isinstance(out["threads"], int) and out["threads"] >= 1
    assert (out["batch_size"], out["accum"], out["folds"], out["quick"], out["demo"]) == (32, 2, 2, True, True)
    assert out["speedup"] == pytest.approx(out["train_img_per_s"] / out["conventional_img_per_s"], rel=1e-3)
    assert out["speedup_same_precision"] == pytest.approx(
        out["train_img_per_s"] / out["conventional_same_precision_img_per_s"], rel=1e-3)
    assert out["bf16_limit_fraction"] == pytest.approx(
        out["flop_limit_fraction"] * out["gemm_gflop_s"] / out["gemm_bf16_gflop_s"], rel=1e-3)
    assert out["baseline"] is None and out["regressions"] == []
    assert "train, conventional per-sample path" in stdout and "no figures recorded" in stdout
    # the quick run times two nets stacked beside the single net: images/s over both nets
    assert out["stacked2_img_per_s"] > 0 and "train, 2 nets stacked, all nets" in stdout
    assert out["stacked2_speedup"] == pytest.approx(out["stacked2_img_per_s"] / out["train_img_per_s"], rel=1e-3)
    # the step rates BUDGET= plans from, per layout of the ladder, at the config's own step (here ACCUM=2)
    assert list(out["layouts"]) == [planner.layout_name(layout) for layout in planner.DEFAULT_LADDER]
    assert all(rate["train"]["1"] > 0 and rate["predict"] > 0 for rate in out["layouts"].values())
    assert "step rates BUDGET= plans from" in stdout and "gn_m7 w24: train" in stdout

    # the record holds this run's figures under its machine; against itself nothing is worse
    recorded = json.loads((workdir / "bench.json").read_text())[bench_results.record_key(out)]
    assert bench_results.record_key(out) == out["machine"] + " (quick)"  # apart from a full run's figures
    assert all(recorded[key] == out[key] for key in FIGURES)
    lines, worse = bench_results.compare(out, recorded)
    assert worse == [] and "nothing is worse" in lines[-1]
    # against a record twice as fast, with the same GEMM, training is named and blamed on the code
    lines, worse = bench_results.compare(out, {**recorded, "train_img_per_s": 2 * out["train_img_per_s"]})
    assert [w["key"] for w in worse] == ["train_img_per_s"]
    _, worse = bench_results.compare(out, {**recorded, "stacked2_img_per_s": 2 * out["stacked2_img_per_s"]})
    assert [w["key"] for w in worse] == ["stacked2_img_per_s"]  # the stacked step is benched like the single one
    assert lines[0].startswith("REGRESSION train_img_per_s") and not any("GEMM" in line for line in lines)


def test_regressions_follow_each_figures_direction() -> None:
    recorded = _record(train_img_per_s=1000.0, predict_s_per_fold=2.0, csv_cold_s=1.0, csv_cached_s=0.1,
                       peak_rss_gib=1.0, ensemble_s=10.0)
    same = dict(recorded)
    assert bench_results.regressions(same, recorded) == []
    # within the tolerance, or better, is not a regression; more images/s and fewer seconds are better
    noisy = {**recorded, "train_img_per_s": 950.0, "predict_s_per_fold": 2.1, "csv_cold_s": 0.5}
    assert bench_results.regressions(noisy, recorded) == []
    slower = {**recorded, "train_img_per_s": 800.0, "csv_cached_s": 0.2, "peak_rss_gib": 1.5}
    worse = bench_results.regressions(slower, recorded)
    assert [w["key"] for w in worse] == ["train_img_per_s", "csv_cached_s", "peak_rss_gib"]
    assert worse[0] == {"key": "train_img_per_s", "recorded": 1000.0, "now": 800.0, "change": -0.2}
    assert worse[1]["change"] == 1.0
    # the references (conventional path, GEMM) and the ratios to them are never called regressions
    reference = {**recorded, "conventional_img_per_s": 1.0, "speedup": 0.1, "flop_limit_fraction": 0.01}
    assert bench_results.regressions(reference, {**recorded, "conventional_img_per_s": 900.0, "speedup": 2.0,
                                         "flop_limit_fraction": 0.7}) == []
    # a figure missing on either side is skipped, not guessed
    assert bench_results.regressions({"machine": "x"}, recorded) == []


def test_compare_only_like_with_like() -> None:
    recorded = _record(train_img_per_s=1000.0)
    now = {**recorded, "train_img_per_s": 500.0, "gemm_gflop_s": 50.0}
    lines, worse = bench_results.compare(now, None)
    assert worse == [] and "no figures recorded" in lines[0]
    for kind in ({"quick": True}, {"demo": True}, {"accum": 1}, {"batch_size": 64}, {"folds": 3}):
        lines, worse = bench_results.compare({**now, **kind}, recorded)
        assert worse == [] and "not compared" in lines[0], kind
    # amp=false on a bf16 machine: fp32 figures are not regressions of the bf16 reference
    lines, worse = bench_results.compare({**now, "precision": "fp32"}, recorded)
    assert worse == [] and "(precision bf16 -> fp32): not compared" in lines[0]
    lines, worse = bench_results.compare(now, recorded)
    assert [w["key"] for w in worse] == ["train_img_per_s"]
    # the GEMM fell as much: the report says the machine itself is slower
    assert "GEMM reference is -50%" in lines[-1]


def test_a_record_from_another_torch_is_named() -> None:
    recorded = _record(train_img_per_s=1000.0, torch="2.15.0+cu132")
    lines, worse = bench_results.compare({**recorded, "torch": "2.14.1+cu130"}, recorded)
    assert worse == [] and lines[0].startswith("WARNING: recorded with torch 2.15.0+cu132, this run has torch 2.14.1+cu130")
    lines, _ = bench_results.compare({**recorded, "torch": "2.15.0+cu132"}, recorded)
    assert not any("WARNING" in line for line in lines)


def test_record_keeps_other_machines(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    bench_results.record(path, "cpu: a, 2 threads", {"train_img_per_s": 1.0})
    bench_results.record(path, "cuda: b", {"train_img_per_s": 2.0})
    bench_results.record(path, "cpu: a, 2 threads", {"train_img_per_s": 3.0})
    saved = json.loads(path.read_text())
    assert {k: v["train_img_per_s"] for k, v in saved.items()} == {"cpu: a, 2 threads": 3.0, "cuda: b": 2.0}
    assert all("recorded" in v for v in saved.values())


def test_settings_split_between_bench_and_config() -> None:
    items = settings.parse_items(["quick=1", "BS=64", "record=1", "results=x.json", "threads=2", "stacks=5 10"])
    ours = settings.take(bench.BenchSettings, items)
    assert ours == bench.BenchSettings(quick=True, record=True, results="x.json", stacks=(5, 10))
    assert items == {"bs": "64", "threads": "2"}  # the config's, handed on


def test_one_cpu_model_with_and_without_bf16_is_two_machines(monkeypatch) -> None:
    # "AMD EPYC" comes both with AVX512-BF16 and AVX2 only; their figures must not be compared with each other
    cpu = torch.device("cpu")
    monkeypatch.setattr(bench_results, "cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(hardware, "native_bf16", lambda device: True)
    with_bf16 = bench_results.machine_id(cpu, 2)
    monkeypatch.setattr(hardware, "native_bf16", lambda device: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert (with_bf16, bench_results.machine_id(cpu, 2)) == ("cpu: AMD EPYC (AVX512-BF16), 2 threads",
                                                    "cpu: AMD EPYC (AVX2), 2 threads")
