"""benchmarks/gpu_check.sh's recipes step, on the CPU: what a GPU lease depends on, so a broken script is found
here and not in the lease. A run trained in one sitting travels as the archive to the next, which skips it,
trains the next recipe and compares the two."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, clean_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
TINY = "ARGS=limit=200 epochs=1 folds=2 tta=false batch_size=64"


def sitting(tmp_path: Path, name: str, demo_dir: Path, *settings: str) -> tuple[Path, str]:
    """One lease: a fresh machine (its own project root), the script's OUT folder, and its report."""
    root, out = tmp_path / f"machine-{name}", tmp_path / f"out-{name}"
    root.mkdir()
    env = clean_env(root)
    done = subprocess.run(["bash", str(SCRIPT), f"DATA={demo_dir}", "DEVICE=cpu", "STEPS=recipes", f"OUT={out}",
                           f"PYTHON={sys.executable}", TINY, *settings],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, (out / "report.log").read_text()


def test_runs_travel_between_sittings_and_are_compared(demo_dir: Path, tmp_path: Path) -> None:
    first, report = sitting(tmp_path, "1", demo_dir, "RECIPES=configs/default.yaml", "NPROC=1")
    assert "wall seconds, default this sitting:" in report and "paired over" not in report
    assert (first / "metrics-default.json").is_file() and list(first.glob("runs.tar.gz.part-*"))
    second, report = sitting(tmp_path, "2", demo_dir, "RECIPES=configs/default.yaml configs/accum.yaml",
                             f"CARRIED={first}")
    assert "wall seconds, default this sitting" not in report  # finished in the first sitting: not trained again
    assert "wall seconds, accum this sitting:" in report and "2 processes, whole nets per rank" in report
    comparison = json.loads(next(line for line in report.splitlines() if line.startswith('{"a"')))
    assert Path(comparison["a"]).name.startswith("accum-") and Path(comparison["b"]).name.startswith("default-")
    assert json.loads((second / "metrics-default.json").read_text()) == \
        json.loads((first / "metrics-default.json").read_text())
    assert sorted(p.name for p in second.iterdir() if not p.name.startswith("runs.tar.gz.part-")) == \
        ["metrics-accum.json", "metrics-default.json", "report.log"]
    archived = subprocess.run(f"cat {second}/runs.tar.gz.part-* | tar -tz", shell=True, capture_output=True,
                              text=True, check=True).stdout.split()
    assert any(name.endswith("test_probs.npy") for name in archived)
    assert not any(name.endswith(("weights.pt", "resume.pt", ".lock")) for name in archived)
