"""benchmarks/gpu_check.sh, dry-run on the CPU, small: both of its steps run to the end, time every training run,
compare the runs it should, and leave the report and the metrics it promises, so a broken script is found here
and not on a GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, clean_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
TINY = "ARGS=limit=200 epochs=1 folds=2 tta=false batch_size=64"


def gpu_check(root: Path, *settings: str) -> subprocess.CompletedProcess:
    """The script as a user runs it, on CPU, with `root` as the project folder (its runs/ and submissions/)."""
    root.mkdir(exist_ok=True)
    return subprocess.run(["bash", str(SCRIPT), "DEVICE=cpu", f"PYTHON={sys.executable}", *settings],
                          env=clean_env(root), capture_output=True, text=True, timeout=900)


def test_both_steps_run_time_and_compare(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = gpu_check(tmp_path / "project", f"DATA={demo_dir}", f"OUT={out}", "QUICK=1", TINY, "NPROC=2",
                     "RECIPES=configs/default.yaml configs/accum.yaml")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = (out / "report.log").read_text()
    assert report.splitlines()[1].startswith("torch ")
    bench = json.loads(next(line for line in report.splitlines() if line.startswith('{"train_img_per_s"')))
    assert bench["quick"] and "stacked2_img_per_s" in bench  # the bench timed stacked nets
    for name in ("gpu-default-auto", "gpu-default-1", "gpu-default", "gpu-accum"):
        assert f"wall seconds, {name}: " in report
    assert "2 processes, whole nets per rank" in report  # the recipes ran under torchrun, parallel=folds
    comparisons = [json.loads(line) for line in report.splitlines() if line.startswith('{"a"')]
    assert [(Path(c["a"]).name.rsplit("-", 2)[0], Path(c["b"]).name.rsplit("-", 2)[0]) for c in comparisons] == \
        [("gpu-default-1", "gpu-default-auto"), ("gpu-accum", "gpu-default")]
    assert sorted(p.name for p in out.iterdir()) == ["metrics-gpu-accum.json", "metrics-gpu-default-1.json",
                                                     "metrics-gpu-default-auto.json", "metrics-gpu-default.json",
                                                     "report.log"]
    run = next((tmp_path / "project" / "runs").glob("gpu-accum-2*"))
    assert json.loads((out / "metrics-gpu-accum.json").read_text()) == json.loads((run / "metrics.json").read_text())


def test_without_data_it_says_what_to_give(tmp_path: Path) -> None:
    done = gpu_check(tmp_path / "project", f"OUT={tmp_path / 'out'}")
    assert done.returncode != 0 and "give DATA=" in done.stderr
