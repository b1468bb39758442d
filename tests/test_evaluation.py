"""Model cost (cost.py) against hand-computed values, and `evaluate` end to end on a tiny run of the demo set."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_cli
from digitrec import config, cost, evaluation, fileio, pipeline, settings
from digitrec.errors import UserError
from digitrec.models import build_model, count_parameters

PNG = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


def test_cost_of_one_linear_layer_matches_hand_computed_values(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    assert count_parameters(model) == 784 * 10 + 10 == 7850
    assert cost.tensor_bytes(model) == 7850 * 4  # float32
    assert cost.flops_per_image(model, CPU) == 2 * 784 * 10  # one multiply-add = 2 FLOPs; bias not counted
    # on disk: the tensors plus torch.save's zip container, which is small
    size = fileio.write_torch(tmp_path / "weights.pt", model.state_dict()).stat().st_size
    assert 7850 * 4 < size < 7850 * 4 + 4096


def test_the_mlps_cost_what_the_write_up_reports() -> None:
    # the write-up: {'params': 814090, 'flops': 1626112} for 784-1024-10
    mlp1, mlp2 = build_model("mlp1"), build_model("mlp2")
    assert count_parameters(mlp1) == 784 * 1024 + 1024 + 1024 * 10 + 10 == 814090
    assert cost.flops_per_image(mlp1, CPU) == 2 * (784 * 1024 + 1024 * 10) == 1626112
    assert count_parameters(mlp2) == 814090 + 1024 * 1024 + 1024
    assert cost.flops_per_image(mlp2, CPU) == 1626112 + 2 * 1024 * 1024


def test_energy_and_latency_arithmetic() -> None:
    joules, grams = cost.energy(2e-3, power_w=50.0, grid_g_per_kwh=360.0)
    assert joules == pytest.approx(0.1) and grams == pytest.approx(0.1 / 3.6e6 * 360.0)
    settings = cost.CostSettings(warmup=1, repeats=3, max_seconds=1.0, power_w=10.0, grid_g_per_kwh=500.0)
    rows = cost.measure_latency(build_model("mlp1"), CPU, (1, 4), settings, channels_last=False)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["repeats"] >= 3 and r["batch_seconds"] > 0
        assert r["latency_s"] == pytest.approx(r["batch_seconds"] / r["batch"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["batch_seconds"])
        assert r["energy_j"] == pytest.approx(r["latency_s"] * 10.0)
        assert r["co2eq_g"] == pytest.approx(r["energy_j"] / 3.6e6 * 500.0)


def test_readable_units_and_settings() -> None:
    assert settings.take(cost.CostSettings, {"device": "cpu"}).device == "cpu"
    assert evaluation.human(2.38e-5, "s") == "23.8 μs"
    assert evaluation.human(9.8e6, "B") == "9.8 MB"
    assert evaluation.human(2.716e-4, "gCO2eq") == "272 μgCO2eq"
    items = {"latency_batches": "1, 16 64", "power_w": "30", "other": "x"}
    taken = settings.take(cost.CostSettings, items)
    assert taken.latency_batches == (1, 16, 64) and taken.power_w == 30.0 and items == {"other": "x"}
    with pytest.raises(UserError, match="latency_batches"):
        settings.take(cost.CostSettings, {"latency_batches": "1 0"})
    with pytest.raises(UserError, match="setting 'repeats' in the command line must be int"):
        settings.take(cost.CostSettings, {"repeats": "many"})


@pytest.mark.slow
def test_evaluate_a_run(workdir: Path, demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)  # the data cache, runs/ and submissions/ go here
    cfg = config.load(None, dict(model="mlp1", data=str(demo_dir), limit=300, folds=2, fold=0, epochs=1,
                                 progress=False, name="tiny", threads=1))
    run = pipeline.train(cfg).run_dir

    result = run_cli(["evaluate", "repeats=3", "warmup=1", "latency_batches=1 8", "power_w=20"], workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    report = fileio.read_json(workdir / run / "evaluation.json")
    metrics = fileio.read_json(workdir / run / "metrics.json")
    assert report["params"] == 814090 and report["flops_per_image"] == 1626112
    assert report["size_bytes"] == (workdir / run / "fold0" / "m0" / "weights.pt").stat().st_size
    assert report["accuracy"] == metrics["oof"]["accuracy"] and report["oof_rows"] == 150
    assert sum(v["rows"] for v in report["per_class"].values()) == 150
    assert [r["batch"] for r in report["latency"]] == [1, 8]
    assert report["energy_method"]["power_w"] == 20.0 and report["device"]
    assert set(report["summary"]) == {"size", "params", "flops", "latency", "accuracy", "CO2eq"}
    table = (workdir / run / "evaluation.md").read_text()
    assert "| size on disk | params |" in table and "20 W" in table and "814,090" in result.stdout
    assert "![learning curves](curves.png)" in table and report["curves"] == "curves.png"
    for png in ("confusion.png", "mistakes.png", "curves.png"):
        assert (workdir / run / png).read_bytes().startswith(PNG)

    wrong = run_cli(["evaluate", "power=3"], workdir)
    assert wrong.returncode == 2 and "unknown evaluate setting(s) power" in wrong.stderr
