"""`make bench`'s figures against those recorded in benchmarks/results.json: the key a machine's figures are
recorded under (a quick run's apart from a full one's), the file read and written, like compared only with like,
what got worse beyond the tolerance, and the table that shows both beside the targets.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import fileio, hardware
from .cost import cpu_name

DEFAULT_RESULTS = "benchmarks/results.json"
# Repeated timings on a shared machine scatter by several percent; only a worse change beyond this
# fraction is called a regression.
TOLERANCE = 0.10
# The figures a regression is judged on, and which way is better. The conventional path and the GEMM
# are references, not our code: when they move, the machine changed (busier, throttled), and the
# speedup and FLOP fraction are ratios to them.
HIGHER_IS_BETTER = ("train_img_per_s",)
LOWER_IS_BETTER = ("predict_s_per_fold", "ensemble_s", "csv_cold_s", "csv_cached_s", "peak_rss_gib")
# The targets for the 2-core CPU: (key, comparison, bound).
TARGETS = {"speedup": (">=", 2.0), "flop_limit_fraction": (">=", 0.60), "csv_cold_s": ("<=", 1.5),
           "csv_cached_s": ("<=", 0.2), "predict_s_per_fold": ("<=", 5.0), "peak_rss_gib": ("<=", 3.0)}


def read_results(path: Path) -> dict:
    return fileio.read_json(path) if path.is_file() else {}


# what makes two bench runs the same kind of run: the sizes, the model, and the precision it computed in
# (amp=false on a bf16 machine is fp32, about a third of the speed, not a regression)
LIKE_WITH_LIKE = ("quick", "demo", "batch_size", "accum", "folds", "model", "precision")


def differences(recorded: dict, current: dict) -> list[str]:
    """The LIKE_WITH_LIKE settings in which two runs differ, as 'key recorded -> now'."""
    return [f"{k} {recorded.get(k)} -> {current.get(k)}" for k in LIKE_WITH_LIKE if recorded.get(k) != current.get(k)]


def comparable(recorded: dict | None, current: dict) -> bool:
    """Recorded figures are compared only when they came from the same kind of run."""
    return bool(recorded) and not differences(recorded, current)


def stacked_keys(result: dict) -> list[str]:
    """The stacked timings a run made: stacked<K>_img_per_s, K ascending."""
    return sorted((k for k in result if k.startswith("stacked") and k.endswith("_img_per_s")),
                  key=lambda k: int(k[len("stacked"):-len("_img_per_s")]))


def regressions(current: dict, recorded: dict, tolerance: float = TOLERANCE) -> list[dict]:
    """The figures that got worse than recorded by more than `tolerance`: each with both values and the
    relative change of the value itself (+0.25: 25% more seconds, or 25% more images/s)."""
    worse = []
    higher = (*HIGHER_IS_BETTER, *stacked_keys(current))
    for key in (*higher, *LOWER_IS_BETTER):
        old, new = recorded.get(key), current.get(key)
        if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or old <= 0:
            continue
        change = (new - old) / old
        if (change < -tolerance) if key in higher else (change > tolerance):
            worse.append({"key": key, "recorded": old, "now": new, "change": round(change, 4)})
    return worse


def record(path: Path, machine: str, result: dict) -> None:
    results = read_results(path)
    results[machine] = {**result, "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    fileio.write_json(path, dict(sorted(results.items())))


def _target(key: str, value: float) -> str:
    if key not in TARGETS:
        return ""
    op, bound = TARGETS[key]
    ok = value >= bound if op == ">=" else value <= bound
    return f"{op} {bound:g} {'ok' if ok else 'MISSED'}"


def table(result: dict, recorded: dict | None) -> str:
    rows = [
        ("train, our pipeline", "train_img_per_s", "img/s"),
        ("train, conventional per-sample path", "conventional_img_per_s", "img/s"),
        ("speedup, ours / conventional", "speedup", "x"),
        ("conventional, our precision", "conventional_same_precision_img_per_s", "img/s"),
        ("speedup at the same precision", "speedup_same_precision", "x"),
        ("fp32 GEMM", "gemm_gflop_s", "GFLOP/s"),
        ("training cost of the model", "train_mflop_per_img", "MFLOP/img"),
        ("fraction of the fp32 GEMM limit", "flop_limit_fraction", ""),
        ("GEMM in our precision (bf16/fp16)", "gemm_bf16_gflop_s", "GFLOP/s"),
        ("fraction of that GEMM limit", "bf16_limit_fraction", ""),
        ("predict the test rows, one fold", "predict_s_per_fold", "s"),
        ("predict the test rows, all folds", "ensemble_s", "s"),
        ("predict, fold ensemble", "ensemble_img_per_s", "img/s"),
        ("parse train+test CSV, no cache", "csv_cold_s", "s"),
        ("load the data, warm cache", "csv_cached_s", "s"),
        ("peak RSS of a training process", "peak_rss_gib", "GiB"),
    ]
    for key in stacked_keys(result):  # after the single net's training row
        nets = key[len("stacked"):-len("_img_per_s")]
        rows.insert(1, (f"train, {nets} nets stacked, all nets", key, "img/s"))
    lines = [f"{'':37} {'now':>10} {'':9} {'recorded':>10}  {'change':>7}  target (2-core CPU)"]
    for label, key, unit in rows:
        value, old = result[key], (recorded or {}).get(key)
        known = isinstance(old, (int, float)) and old > 0
        old_text, change = (f"{old:.4g}", f"{(value - old) / old:+.0%}") if known else ("-", "")
        lines.append(f"{label:37} {value:>10.4g} {unit:<9} {old_text:>10}  {change:>7}  {_target(key, value)}")
    return "\n".join(lines)


def machine_id(device: torch.device, threads: int) -> str:
    """The key results are recorded under: the GPU's name, or the CPU model, its vector unit and the thread
    count. The vector unit is part of it because one model name ("AMD EPYC") comes both with AVX512-BF16,
    where training runs in bf16, and AVX2 only, where it runs in fp32 at about a third of the speed."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    vector_unit = "AVX512-BF16" if hardware.native_bf16(device) else torch.backends.cpu.get_cpu_capability()
    return f"cpu: {cpu_name()} ({vector_unit}), {threads} threads"


def record_key(result: dict) -> str:
    """Where a run's figures are recorded: its machine, and apart from the full bench a quick one's."""
    return result["machine"] + (" (quick)" if result["quick"] else "")


def compare(result: dict, previous: dict | None) -> tuple[list[str], list[dict]]:
    """What to say about this run against the figures recorded for its machine, and what got worse."""
    machine = record_key(result)
    if previous is None:
        return [f"no figures recorded for '{machine}' yet (record=1 stores these)"], []
    if not comparable(previous, result):
        return [f"the figures recorded for '{machine}' come from another kind of run "
                f"({', '.join(differences(previous, result))}): not compared"], []
    worse = regressions(result, previous)
    lines = []
    if previous.get("torch") and previous["torch"] != result.get("torch"):
        lines.append(f"WARNING: recorded with torch {previous['torch']}, this run has torch {result.get('torch')}: a "
                     f"change may be torch's, not the code's (constraints.txt pins the version the tests pass with)")
    lines += [f"REGRESSION {w['key']}: {w['recorded']:.4g} -> {w['now']:.4g} ({w['change']:+.0%}), "
              f"worse than recorded on {previous['recorded']}" for w in worse]
    moved = result["gemm_gflop_s"] / previous["gemm_gflop_s"] - 1 if previous.get("gemm_gflop_s") else 0.0
    if worse and moved < -TOLERANCE:
        lines.append(f"note: the GEMM reference is {moved:+.0%} too: the machine is slower than when recorded (busy?)")
    if not worse:
        lines.append(f"nothing is worse than recorded on {previous['recorded']} by more than {TOLERANCE:.0%}")
    return lines, worse
