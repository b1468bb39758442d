"""`make evaluate [RUN=]`: how accurate a trained run is, and what its model costs; `make compare A= B=`:
whether one run is more accurate than another, by McNemar's paired test on the rows they disagree on.

Accuracy is the out-of-fold CV accuracy, overall and per class, with the confusion matrix and the most
confident mistakes drawn as PNGs, and every net's learning curves (curves.png, also drawn at the end of
`make train`; of a run still training or interrupted, what it has so far). The cost (size on disk of the
fold's weights.pt, parameters, FLOPs, latency, energy and CO2eq per inference) is measured by cost.py, as
the sweep (studies.py) measures its points.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import config as config_mod
from . import engine, fileio, hardware, logs, nets, pipeline, plots, runs
from . import settings as settings_mod
from .config import Config
from .cost import CostSettings, ensemble_cost, model_cost
from .errors import UserError
from .metrics import mcnemar

log = logging.getLogger(__name__)


def model_name(cfg: Config) -> str:
    """The model as the figures name it: its width too where it has one (not an MLP or a timm model)."""
    return cfg.model if cfg.model.startswith(("mlp", "timm:")) else f"{cfg.model} width {cfg.width}"


def load_fold_model(run_dir: Path, cfg: Config, fold: int, device: torch.device) -> nn.Module:
    """Fold `fold`'s net of the run's first ensemble member."""
    return engine.load_net(runs.unit_dir(run_dir, fold, 0), config_mod.member_configs(cfg)[0], device)


# ---------------------------------------------------------------- readable numbers


def human(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: human(2.38e-5, 's') == '23.8 μs'."""
    if value == 0:
        return f"0 {unit}"
    prefixes = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "μ"), (1e-9, "n")]
    scale, prefix = next(((s, p) for s, p in prefixes if abs(value) >= s), prefixes[-1])
    return f"{value / scale:.3g} {prefix}{unit}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- a run


def evaluate_run(folder: Path, settings: CostSettings) -> dict:
    """evaluation.json, evaluation.md, confusion.png and mistakes.png in `folder`, a run or a `make predict`
    folder inside one (its predictions, the run's nets), and the run's curves.png; returns the JSON. An
    unfinished run gets its curves.png of what it has trained, then the error that says it is unfinished."""
    run_dir = runs.run_of(folder)
    curves = draw_curves(run_dir)
    _need_finished(folder, f"{curves.describe()}; {curves.path} shows them so far")
    saved = pipeline.open_run(run_dir, {"device": settings.device} if settings.device else None)
    cfg, record, dataset, rows = saved.cfg, saved.record, saved.dataset, saved.rows
    metrics = fileio.read_json(folder / "metrics.json")
    done = metrics["folds_done"]
    device = hardware.select_device(cfg.device)

    weights = runs.unit_dir(run_dir, done[0], 0) / "weights.pt"
    model = load_fold_model(run_dir, cfg, done[0], device)
    cost = model_cost(model, device, settings.latency_batches, settings, cfg)
    cost["submission"] = ensemble_cost(folder, cfg, device)
    accuracy = metrics["oof"]
    result = {"run": str(folder), "model": cfg.model, "data": record["source"], "demo_data": record["demo"],
              "folds_done": done, "folds_total": cfg.folds, "size_bytes": weights.stat().st_size, **cost,
              "accuracy": accuracy["accuracy"], "log_loss": accuracy["log_loss"], "oof_rows": accuracy["rows"],
              "per_class": accuracy["per_class"], "confusion": accuracy["confusion"]}
    first = result["latency"][0]
    # the write-up's one-line summary, with its keys, for a side-by-side comparison
    result["summary"] = {"size": human(result["size_bytes"], "B"), "params": result["params"],
                         "flops": result["flops_per_image"], "latency": human(first["latency_s"], "s"),
                         "accuracy": f"{result['accuracy']:.1%}", "CO2eq": human(first["co2eq_g"], "gCO2eq")}
    result["curves"] = os.path.relpath(curves.path, folder)  # ../curves.png from a predict folder
    fileio.write_json(folder / "evaluation.json", result)

    title = f"{_name(folder)}: OOF accuracy {result['accuracy']:.2%} over {result['oof_rows']} rows"
    plots.confusion_png(accuracy["confusion"], folder / "confusion.png", title)
    oof = np.load(folder / "oof_probs.npy")
    covered = np.flatnonzero(np.isfinite(oof).all(1))  # the rows of finished folds
    labels = dataset.train_labels[rows][covered]
    probs = oof[covered]
    predicted, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][: settings.worst]  # most confident first
    plots.mistakes_png(dataset.train_images[rows][covered][worst], labels[worst], predicted[worst],
                       confidence[worst], folder / "mistakes.png",
                       f"the {len(worst)} most confident of {len(wrong)} out-of-fold mistakes")
    table = report(result)
    fileio.write_text(folder / "evaluation.md", table)
    print(table)
    return result


def report(result: dict) -> str:
    method = result["energy_method"]
    first = result["latency"][0]
    sub = result["submission"]
    n_models = sub["nets_in_submission"]
    summary = markdown_table(
        ["size on disk", "params", "FLOPs / image", f"latency (batch {first['batch']})", "OOF accuracy",
         "energy / inference", "CO2eq / inference"],
        [[human(result["size_bytes"], "B"), f"{result['params']:,}", f"{result['flops_per_image']:,}",
          human(first["latency_s"], "s"), f"{result['accuracy']:.2%}", human(first["energy_j"], "J"),
          human(first["co2eq_g"], "gCO2eq")]])
    latency = markdown_table(
        ["batch", "time / batch", "latency / image", "images / s", "energy / image", "CO2eq / image"],
        [[r["batch"], human(r["batch_seconds"], "s"), human(r["latency_s"], "s"), f"{r['images_per_s']:,.0f}",
          human(r["energy_j"], "J"), human(r["co2eq_g"], "gCO2eq")] for r in result["latency"]])
    per_class = markdown_table(
        ["class", "rows", "accuracy", "errors"],
        [[c, v["rows"], f"{v['accuracy']:.2%}", v["errors"]] for c, v in result["per_class"].items()])
    return (
        f"# Evaluation of {_name(Path(result['run']))}\n\n"
        f"Model `{result['model']}`, data {result['data']}; {n_models} of {result['folds_total']} folds "
        f"trained, accuracy out-of-fold over {result['oof_rows']} rows. Cost of one net (member 0) on "
        f"{result['device']}; the submission averages {n_models} net{'s' if n_models > 1 else ''} "
        f"({len(sub['members'])} member{'s' if len(sub['members']) > 1 else ''}): {sub['params']:,} parameters "
        f"and {sub['flops_per_image']:,} FLOPs per image in all.\n\n{summary}\n"
        f"## Latency by batch size\n\nMedian of up to {max(r['repeats'] for r in result['latency'])} timed calls "
        f"(torch.utils.benchmark.Timer.adaptive_autorange) after {result['warmup']} warm-up calls, uint8 images "
        f"in, probabilities out.\n\n{latency}\n"
        f"## Accuracy per class (out-of-fold)\n\n{per_class}\n"
        f"## Method\n\nSize: the weights file on disk ({result['tensor_bytes']:,} bytes of tensors). FLOPs: counted "
        f"by torch.utils.flop_counter on one image, 2 per multiply-add. Energy: {method['formula']}; power "
        f"{method['power_w']:g} W, {method['power_source']}; grid {method['grid_g_per_kwh']:g} gCO2eq/kWh "
        f"(set grid_g_per_kwh=).\n\n![confusion matrix](confusion.png)\n\n![worst mistakes](mistakes.png)\n\n"
        f"![learning curves]({result['curves']})\n")


def command(args) -> None:
    items = settings_mod.parse_items(args.overrides)
    settings = settings_mod.take(CostSettings, items).validate()
    if items:
        known = ", ".join(f.name for f in dataclasses.fields(CostSettings))
        raise UserError(f"unknown evaluate setting(s) {', '.join(items)}; known: {known}")
    logs.setup()
    evaluate_run(runs.resolve_run(args.run, args.runs_dir), settings)


# ---------------------------------------------------------------- learning curves


@dataclass
class Curves:
    """What a run has trained so far: each net's history that has one, of the `total` nets the run trains;
    `path`: the curves.png drawn of them."""

    nets: list[plots.NetCurve]
    total: int
    path: Path

    def describe(self) -> str:
        finished = sum(net.finished for net in self.nets)
        training = len(self.nets) - finished
        return f"{finished} of {self.total} nets finished" + (f", {training} in training" if training else "")


def net_history(net_dir: Path) -> tuple[list[dict], bool] | None:
    """A net's epochs so far and whether it is finished: history.json once it is, else the history in its
    resume point; None before its first epoch ends."""
    finished = net_dir / "history.json"
    if not finished.is_file() and (net_dir / "resume.pt").is_file():
        try:
            return fileio.read_torch(net_dir / "resume.pt")["history"], False
        except UserError:
            if not finished.is_file():  # else the net finished while it was read, and resume.pt went
                raise
    return (fileio.read_json(finished), True) if finished.is_file() else None


def draw_curves(run_dir: Path) -> Curves:
    """run_dir/curves.png of every net of the run that has finished an epoch (nets.units_to_train: each
    member on each fold, pseudo-label rounds, refit)."""
    cfg = config_mod.load(run_dir / "config.yaml")
    units = nets.units_to_train(cfg)
    drawn = []
    for unit in units:
        found = net_history(unit.dir(run_dir))
        if found is not None:
            drawn.append(plots.NetCurve(unit.member, unit.round, unit.fold, *found))
    members = config_mod.member_configs(cfg)
    names = [f"member {j}: {model_name(m)}" if len(members) > 1 else model_name(m) for j, m in enumerate(members)]
    curves = Curves(drawn, len(units), run_dir / "curves.png")
    finished = all(net.finished for net in drawn) and len(drawn) == len(units)
    title = f"{run_dir.name}: learning curves" + ("" if finished else f" (incomplete: {curves.describe()})")
    plots.curves_png(drawn, names, curves.path, title)
    return curves


def curves_after_training(run_dir: Path) -> None:
    """curves.png at the end of `make train`: a figure that cannot be drawn is one warning, never a failed run."""
    try:
        log.info(f"learning curves: {draw_curves(run_dir).path}")
    except Exception as e:  # the run is trained and saved whatever happens to its figure
        log.warning(f"curves.png not drawn: {type(e).__name__}: {e}")


# ---------------------------------------------------------------- two runs, paired


@dataclass
class CompareSettings:
    a: str | None = None  # the baseline: a run folder or name under runs/
    b: str | None = None  # the change, trained on the same rows


def _need_finished(folder: Path, progress: str = "") -> None:
    if not runs.is_complete(folder):
        redo = "rerun its `make predict`" if runs.run_of(folder) != folder else "rerun its `make train` to complete it"
        raise UserError(f"{folder}: not finished (no metrics.json{f'; {progress}' if progress else ''}); {redo}")


def _name(folder: Path) -> str:
    """A run's name, or run/predict-... for a `make predict` folder."""
    run = runs.run_of(folder)
    return run.name if run == folder else f"{run.name}/{folder.name}"


def compare_runs(run_a: Path, run_b: Path) -> dict:
    """McNemar's test of run b against run a on the out-of-fold rows both have predicted: the errors of
    each, the rows only one of them gets right, and the p-value. Either may be a `make predict` folder (TTA
    on against off, say). The runs must hold the same rows of the same data (their folds may differ)."""
    for folder in (run_a, run_b):
        _need_finished(folder)
    saved = pipeline.open_run(runs.run_of(run_a))
    if fileio.read_json(runs.run_of(run_b) / "data.json")["content_hash"] != saved.record["content_hash"]:
        raise UserError(f"{run_b}: was trained on other data than {run_a}; a paired test needs the same rows")
    if not np.array_equal(np.load(runs.run_of(run_b) / "folds.npz")["rows"], saved.rows):
        raise UserError(f"{run_b}: holds other rows of train.csv than {run_a} (limit or seed differ); "
                        f"a paired test needs the same rows")
    oof_a, oof_b = np.load(run_a / "oof_probs.npy"), np.load(run_b / "oof_probs.npy")
    both = np.isfinite(oof_a).all(1) & np.isfinite(oof_b).all(1)
    if not both.any():
        raise UserError(f"{run_a} and {run_b} have no out-of-fold row in common (different FOLD=?)")
    return {"a": str(run_a), "b": str(run_b), **mcnemar(saved.labels[both], oof_a[both], oof_b[both])}


def compare_command(args) -> None:
    items = settings_mod.parse_items(args.overrides)
    options = settings_mod.take(CompareSettings, items)
    if items or not (options.a and options.b):
        raise UserError("compare takes A=<run> B=<run> (run folders or names under runs/), e.g. "
                        "make compare A=default-20261204-101500 B=pl-20261204-120000")
    logs.setup()
    result = compare_runs(runs.resolve_run(options.a, args.runs_dir), runs.resolve_run(options.b, args.runs_dir))
    rows = result["rows"]
    print(f"paired over {rows} out-of-fold rows:\n"
          f"  A {_name(Path(result['a']))}: {result['a_errors']} errors ({1 - result['a_errors'] / rows:.3%})\n"
          f"  B {_name(Path(result['b']))}: {result['b_errors']} errors ({1 - result['b_errors'] / rows:.3%})\n"
          f"  rows only A gets right: {result['only_a_right']}; only B: {result['only_b_right']}; "
          f"McNemar exact p = {result['p_value']:.3g}")
    print(json.dumps(result))
