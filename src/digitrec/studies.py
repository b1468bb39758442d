"""`make sweep`: the two batch-size studies of the write-ups, rerunnable on any machine.

  STUDY=batch MODEL=mlp1 BATCH_SIZES="1 16 64 128"   one point per batch size (default: 1 16 64 128 for
                                                       the MLPs, 32 64 ... 1024 for a CNN)
  STUDY=accum BS=128 ACCUMS="1 2 4 8"                 BS x ACCUM accumulated, beside true batches of
                                                       BS x ACCUM images

Each point is an ordinary run (config + overrides, trained by pipeline.train) in OUT/runs/<point>-*,
so training, its per-epoch history and epoch-level resuming are the pipeline's own. By default a point
trains fold 0 only (its holdout is 1/FOLDS of the rows; fold=all runs full CV). When a point is done,
its row (times, accuracy curve, final accuracy, latency, energy, measured by evaluation.py) goes to
OUT/points/<point>.json: a rerun skips such points, and Ctrl-C loses at most the epoch in progress.
Then OUT gets sweep.csv, sweep.md and the plots; the reduced settings used are written in all three.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import config as config_mod
from . import engine, fileio, pipeline, plots, runs
from .config import Config
from .errors import UserError
from .evaluation import (CostSettings, energy, human, load_fold_model, markdown_table,
                         model_cost, normalize_keys, take_settings)

MLP_BATCHES = (1, 16, 64, 128)  # the MLP write-up
CNN_BATCHES = (32, 64, 128, 256, 512, 1024)  # the CNN write-up
SERIES = {"batch": "true batch", "accum": "BS x ACCUM (accumulated)"}


@dataclass
class StudySettings:
    study: str = "batch"  # batch | accum
    batch_sizes: tuple[int, ...] | None = None  # STUDY=batch; None: by model family
    bs: int = 128  # STUDY=accum: the micro-batch
    accums: tuple[int, ...] = (1, 2, 4, 8)  # STUDY=accum
    fold: str = "0"  # the fold each point trains, or "all" for full cross-validation
    out: str | None = None  # None: runs/sweep-<study>-<model>


@dataclass
class Point:
    name: str
    batch_size: int
    accum: int

    @property
    def kind(self) -> str:
        return "accum" if self.accum > 1 else "batch"

    @property
    def effective(self) -> int:
        return self.batch_size * self.accum


def plan(study: StudySettings, model: str) -> list[Point]:
    if study.study == "batch":
        sizes = study.batch_sizes or (MLP_BATCHES if model.startswith("mlp") else CNN_BATCHES)
        return [Point(f"b{b}", b, 1) for b in sizes]
    # a true batch for every effective size, and the accumulated one beside it (ACCUM=1 is both)
    points = [Point(f"b{study.bs * a}", study.bs * a, 1) for a in study.accums]
    return points + [Point(f"b{study.bs}x{a}", study.bs, a) for a in study.accums if a > 1]


def parse(args) -> tuple[StudySettings, CostSettings, Config]:
    """The sweep's own settings, the cost-measurement settings, and the base config (everything else)."""
    items = normalize_keys(config_mod.parse_overrides(args.overrides))
    given = set(items)
    study = take_settings(StudySettings, items)
    cost = take_settings(CostSettings, items).validate()
    fixed = sorted({config_mod.ALIASES.get(k, k) for k in items} & {"batch_size", "accum"})
    if fixed:
        raise UserError(f"a sweep sets {' and '.join(fixed)} per point: give BATCH_SIZES= (STUDY=batch) "
                        "or BS= and ACCUMS= (STUDY=accum)")
    if study.study not in ("batch", "accum"):
        raise UserError(f"STUDY must be batch or accum, got '{study.study}'")
    if study.study == "batch" and given & {"bs", "accums"}:
        raise UserError("BS= and ACCUMS= belong to STUDY=accum; STUDY=batch takes BATCH_SIZES=")
    if study.study == "accum" and "batch_sizes" in given:
        raise UserError("BATCH_SIZES= belongs to STUDY=batch; STUDY=accum takes BS= and ACCUMS=")
    if study.bs < 1:
        raise UserError(f"BS must be >= 1, got {study.bs}")
    base = config_mod.load(args.config, items)
    if study.fold != "all" and not (study.fold.isdigit() and int(study.fold) < base.folds):
        raise UserError(f"fold must be all or 0..{base.folds - 1}, got '{study.fold}'")
    return study, cost, base


def point_config(base: Config, point: Point, study: StudySettings, out: Path) -> Config:
    cfg = dataclasses.replace(base, name=point.name, batch_size=point.batch_size, accum=point.accum,
                              fold=None if study.fold == "all" else int(study.fold),
                              runs_dir=str(out / "runs"), submissions_dir=str(out / "submissions"))
    return config_mod.validate(cfg)


def finished_run(cfg: Config) -> Path | None:
    """A complete run of this point (training finished, but the sweep stopped before its row was saved)."""
    for run in reversed(runs.list_runs(runs.runs_root(cfg))):
        if run.name.startswith(f"{cfg.name}-") and runs.is_complete(run) and \
                config_mod.same_training(config_mod.load(run / "config.yaml"), cfg):
            return run
    return None


def measure(point: Point, cfg: Config, run_dir: Path, cost_settings: CostSettings) -> dict:
    """The point's row: training time and curve from the fold histories, accuracy from metrics.json,
    inference cost of its (first) fold model at batch 1 and at its own batch size."""
    metrics = fileio.read_json(run_dir / "metrics.json")
    done = metrics["folds_done"]
    histories = [fileio.read_json(runs.unit_dir(run_dir, k, 0) / "history.json") for k in done]
    train_s = sum(epoch["seconds"] for h in histories for epoch in h)
    curve = np.mean([[epoch["val_acc"] for epoch in h] for h in histories], axis=0)  # mean over folds
    device = engine.select_device(cfg.device)
    model = load_fold_model(run_dir, cfg, done[0], device)
    cost = model_cost(model, device, tuple(dict.fromkeys((1, point.batch_size))), cost_settings, cfg)
    single, own = cost["latency"][0], cost["latency"][-1]
    method = cost["energy_method"]
    train_j, train_g = energy(train_s, method["power_w"], method["grid_g_per_kwh"])
    return {
        "point": point.name, "kind": point.kind, "batch_size": point.batch_size, "accum": point.accum,
        "effective_batch": point.effective, "lr": cfg.scaled_lr, "epochs": cfg.epochs,
        "rows": fileio.read_json(run_dir / "data.json")["train_rows"], "folds_trained": len(done),
        "holdout_rows": metrics["oof"]["rows"], "train_s": train_s, "epoch_s": train_s / (cfg.epochs * len(done)),
        "accuracy": metrics["oof"]["accuracy"], "val_acc_per_epoch": " ".join(f"{a:.4f}" for a in curve),
        "latency_b1_us": single["latency_s"] * 1e6, "latency_own_batch_us": own["latency_s"] * 1e6,
        "images_per_s_own_batch": own["images_per_s"], "infer_energy_mj": single["energy_j"] * 1e3,
        "infer_co2eq_ug": single["co2eq_g"] * 1e6, "train_energy_wh": train_j / 3600, "train_co2eq_g": train_g,
        "params": cost["params"], "flops_per_image": cost["flops_per_image"], "device": cost["device"],
        "power_w": method["power_w"], "grid_g_per_kwh": method["grid_g_per_kwh"], "run": run_dir.name,
    }


def run_points(points: list[Point], base: Config, study: StudySettings, cost: CostSettings, out: Path) -> list[dict]:
    rows = []
    bar = tqdm(points, desc="sweep", unit="point", disable=not base.progress, dynamic_ncols=True)
    for point in bar:
        bar.set_postfix_str(f"{point.name}: BS {point.batch_size} x ACCUM {point.accum}")
        cfg = point_config(base, point, study, out)
        record = out / "points" / f"{point.name}.json"
        if record.is_file():
            saved = fileio.read_json(record)
            if config_mod.same_training(Config(**saved["config"]), cfg):
                pipeline.log(f"point {point.name}: finished earlier, skipped")
                rows.append(saved["row"])
                continue
        run_dir = finished_run(cfg) or pipeline.train(cfg).run_dir
        row = measure(point, cfg, run_dir, cost)
        fileio.write_json(record, {"config": cfg.to_dict(), "row": row})
        pipeline.log(f"point {point.name}: accuracy {row['accuracy']:.2%}, {row['train_s']:.0f}s training")
        rows.append(row)
    return rows


def settings_note(study: StudySettings, base: Config, rows: list[dict]) -> str:
    first = rows[0]
    folds = "all folds (OOF CV)" if study.fold == "all" else f"fold {study.fold} of {base.folds} (holdout)"
    subset = f"a stratified subset of {first['rows']} rows" if base.limit else f"all {first['rows']} rows"
    model = base.model if base.model.startswith(("mlp", "timm:")) else f"{base.model} width {base.width}"
    return (f"model {model}, {base.epochs} epochs, {subset}, {folds}, optimizer {base.optimizer}, "
            f"lr {base.lr:g} at batch {base.lr_ref_batch} scaled by {base.lr_scaling} of the effective batch; "
            f"{first['device']}, torch {torch.__version__}; energy = time x {first['power_w']:g} W, "
            f"CO2eq x {first['grid_g_per_kwh']:g} g/kWh")


def write_outputs(rows: list[dict], study: StudySettings, base: Config, out: Path) -> None:
    note = settings_note(study, base, rows)
    frame = pd.DataFrame(rows).sort_values("effective_batch", kind="stable")  # accumulated beside true
    rows = frame.to_dict("records")
    fileio.write_text(out / "sweep.csv", frame.to_csv(index=False))

    def series(y: str, scale: float = 1.0) -> dict:
        return {SERIES[kind]: (list(group["effective_batch"]), list(group[y] * scale))
                for kind, group in frame.groupby("kind", sort=False)}

    xlabel = "effective batch size (BS x ACCUM)" if study.study == "accum" else "batch size"
    true = frame[frame["kind"] == "batch"]  # an accumulated point's model is its micro-batch point's
    panels = {
        "train_time": plots.Panel("training time (s)", series("train_s"), xlabel, log_y=True),
        "latency": plots.Panel("inference latency per image (μs)", {
            "at batch 1": (list(true["effective_batch"]), list(true["latency_b1_us"])),
            "at the training batch size": (list(true["effective_batch"]), list(true["latency_own_batch_us"]))},
            xlabel, log_y=True),
        "accuracy": plots.Panel("final accuracy (%)", series("accuracy", 100), xlabel),
        "energy": plots.Panel("training energy (Wh)", series("train_energy_wh"), xlabel, log_y=True),
    }
    for name, panel in panels.items():
        plots.lines_png([panel], out / f"{name}.png", f"{panel.ylabel} vs {xlabel}", note)
    curves = plots.Panel("validation accuracy (%)", {
        f"{r['point']} (BS {r['batch_size']} x {r['accum']})" if r["accum"] > 1 else f"BS {r['batch_size']}":
            (list(range(1, r["epochs"] + 1)), [100 * float(a) for a in r["val_acc_per_epoch"].split()])
        for r in rows}, "epoch", log2_x=False)
    plots.lines_png([curves], out / "accuracy_per_epoch.png", "accuracy per epoch by batch size", note)
    figures = ["train_time", "latency", "accuracy", "energy", "accuracy_per_epoch"]
    if study.study == "accum":
        plots.lines_png([panels["accuracy"], panels["train_time"]], out / "accum_vs_true.png",
                        "accumulated gradients vs true large batches", note)
        figures.append("accum_vs_true")

    table = markdown_table(
        ["point", "BS x ACCUM", "lr", "training", "per epoch", "accuracy", "accuracy per epoch",
         "latency b=1", "latency own batch", "train energy", "CO2eq / inference"],
        [[r["point"], f"{r['batch_size']} x {r['accum']}", f"{r['lr']:.3g}", human(r["train_s"], "s"),
          human(r["epoch_s"], "s"), f"{r['accuracy']:.2%}",
          " ".join(f"{100 * float(a):.1f}" for a in r["val_acc_per_epoch"].split()),
          human(r["latency_b1_us"] * 1e-6, "s"), human(r["latency_own_batch_us"] * 1e-6, "s"),
          human(r["train_energy_wh"], "Wh"), human(r["infer_co2eq_ug"] * 1e-6, "gCO2eq")] for r in rows])
    images = "\n".join(f"![{name}]({name}.png)" for name in figures)
    fileio.write_text(out / "sweep.md", f"# Sweep: STUDY={study.study}\n\nSettings: {note}.\n\n"
                      f"Accuracy: on the {rows[0]['holdout_rows']} held-out rows. Training time: the wall clock "
                      f"of the epochs (training steps and each epoch's validation pass). Latency: median per "
                      f"image of one fold model at batch 1 and at the point's (micro-)batch size.\n\n"
                      f"{table}\n{images}\n")
    print(table)
    pipeline.log(f"sweep outputs in {out}: sweep.csv, sweep.md, {', '.join(f + '.png' for f in figures)}")


def command(args) -> None:
    study, cost, base = parse(args)
    if base.threads:  # also for points whose training is skipped: their latency is measured here
        torch.set_num_threads(base.threads)
    # a fixed default folder, so the same command finds its finished points again
    out = Path(study.out or Path(base.runs_dir) / f"sweep-{study.study}-{base.model.replace(':', '_')}")
    points = plan(study, base.model)
    pipeline.log(f"sweep {study.study}: {len(points)} points ({', '.join(p.name for p in points)}) into {out}")
    rows = run_points(points, base, study, cost, out)
    write_outputs(rows, study, base, out)
