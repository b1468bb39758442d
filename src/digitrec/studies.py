"""`make sweep`: the two write-ups' studies, rerunnable on any machine.

  STUDY=batch MODEL=mlp1 BATCH_SIZES="1 16 64 128"   one point per batch size (default: 1 16 64 128 for
                                                       the MLPs, 32 64 ... 1024 for a CNN)
  STUDY=accum BS=128 ACCUMS="1 2 4 8"                 BS x ACCUM accumulated, beside true batches of
                                                       BS x ACCUM images
  STUDY=norm BS=128 ACCUMS=8                          the accum points twice: GroupNorm and BatchNorm
                                                       (BatchNorm sees micro-batches, so 8 x 128 is no
                                                       longer one batch of 1024)

ARMS="rule fixed" trains every point twice: with our LR rule (lr at lr_ref_batch, scaled to the
effective batch by lr_scaling) and with the write-ups' fixed LR (the same lr at every batch size); a
point whose two LRs agree is trained once. SEEDS="42 43" repeats every point per seed (the seed also
draws the folds, so the spread includes the holdout's draw); tables and plots show the seeds' mean and
the spread between them.

Each point is an ordinary run (config + overrides, trained by pipeline.train) in OUT/runs/<point>-*,
so training, its per-epoch history and epoch-level resuming are the pipeline's own. By default a point
trains fold 0 only (its holdout is 1/FOLDS of the rows; fold=all runs full CV). Before training the
sweep times a few steps of every distinct point and prints its estimate of the whole study; after each
point it prints points and epochs done and the time left. When a point is done, its row (times,
accuracy curve, final accuracy, latency, energy, measured by evaluation.py) goes to
OUT/points/<point>.json: a rerun skips such points, and Ctrl-C loses at most the epoch in progress.
Then OUT gets sweep.csv, sweep.md and the plots; the settings used are written in all three. The plots
are drawn from sweep.csv, and ARGS=redraw=1 draws them again from OUT's sweep.csv, training nothing.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import config as config_mod
from . import commands, engine, fileio, hardware, logs, pipeline, plots, runs
from .competition import in_project
from .config import Config
from .cost import CostSettings, energy, model_cost
from .errors import UserError
from .evaluation import human, load_fold_model, markdown_table, model_name
from .models import NORMALISED
from .settings import ALIASES, parse_items, take

log = logging.getLogger(__name__)

MLP_BATCHES = (1, 16, 64, 128)  # the MLP write-up
CNN_BATCHES = (32, 64, 128, 256, 512, 1024)  # the CNN write-up
STUDIES = ("batch", "accum", "norm")
ARMS = ("rule", "fixed")


@dataclass
class StudySettings:
    study: str = "batch"  # batch | accum | norm
    batch_sizes: tuple[int, ...] | None = None  # STUDY=batch; None: by model family
    bs: int = 128  # STUDY=accum and norm: the micro-batch
    accums: tuple[int, ...] | None = None  # STUDY=accum (default 1 2 4 8) and norm (default 8)
    arms: str = "rule"  # rule | fixed | "rule fixed": our LR rule, the write-ups' fixed LR, or both
    seeds: tuple[int, ...] | None = None  # every point once per seed; None: the config's seed
    fold: str = "0"  # the fold each point trains, or "all" for full cross-validation
    out: str | None = None  # None: runs/sweep-<study>-<model>
    redraw: bool = False  # draw OUT's PNGs again from its sweep.csv; trains nothing

    @property
    def arm_list(self) -> list[str]:
        return self.arms.replace(",", " ").split()


@dataclass(frozen=True)
class Point:
    name: str
    batch_size: int
    accum: int
    norm: str = "group"
    arm: str = "rule"
    seed: int | None = None  # None: the base config's

    @property
    def kind(self) -> str:
        return "accum" if self.accum > 1 else "batch"

    @property
    def effective(self) -> int:
        return self.batch_size * self.accum

    @property
    def series(self) -> str:
        """The line a point belongs to in the plots: how its batch is made, its norm, its LR arm."""
        label = "BS x ACCUM (accumulated)" if self.kind == "accum" else "true batch"
        label += ", BatchNorm" if self.norm == "batch" else ""
        return label + (", fixed lr" if self.arm == "fixed" else "")

    @property
    def group(self) -> str:
        """The point's name without its seed: the seeds of one group are averaged."""
        return self.name.rsplit("-s", 1)[0] if self.seed is not None else self.name


def plan(study: StudySettings, base: Config) -> list[Point]:
    """Every point of the study: sizes (or BS x ACCUMS) x norms x LR arms x seeds, a point whose config
    would repeat an earlier one's (the fixed arm at lr_ref_batch) left out."""
    if study.study == "batch":
        shapes = [(b, 1) for b in study.batch_sizes or (MLP_BATCHES if base.model.startswith("mlp") else CNN_BATCHES)]
    else:  # a true batch for every effective size, and the accumulated one beside it (ACCUM=1 is both)
        accums = study.accums or ((8,) if study.study == "norm" else (1, 2, 4, 8))
        accums = tuple(dict.fromkeys((1, *accums))) if study.study == "norm" else accums  # norm: BS itself too
        shapes = [(study.bs * a, 1) for a in accums] + [(study.bs, a) for a in accums if a > 1]
    norms = ("group", "batch") if study.study == "norm" else (base.norm,)
    seeds = study.seeds or (None,)
    points, seen = [], set()
    for seed in seeds:  # seed by seed: a study stopped early has whole comparisons, not half of each
        for norm in norms:
            for arm in study.arm_list:
                for batch_size, accum in shapes:
                    name = f"b{batch_size}" + (f"x{accum}" if accum > 1 else "") + ("-bn" if norm == "batch" else "")
                    name += ("-fixed" if arm == "fixed" else "") + (f"-s{seed}" if seed is not None else "")
                    point = Point(name, batch_size, accum, norm, arm, seed)
                    cfg = point_config(base, point, study, Path("."))
                    # what training sees: the LR itself, not the rule that made it
                    training = {**cfg.to_dict(), "name": None, "lr": cfg.scaled_lr, "lr_scaling": None}
                    key = repr(sorted(training.items()))
                    if key not in seen:
                        seen.add(key)
                        points.append(point)
    return points


def parse(args) -> tuple[StudySettings, CostSettings, Config]:
    """The sweep's own settings, the cost-measurement settings, and the base config (everything else)."""
    items = parse_items(args.overrides)
    given = set(items)
    study = take(StudySettings, items)
    cost = take(CostSettings, items).validate()
    fixed = sorted({ALIASES.get(k, k) for k in items} & {"batch_size", "accum"})
    if fixed:
        raise UserError(f"a sweep sets {' and '.join(fixed)} per point: give BATCH_SIZES= (STUDY=batch) "
                        "or BS= and ACCUMS= (STUDY=accum)")
    if study.study not in STUDIES:
        raise UserError(f"STUDY must be {', '.join(STUDIES)}, got '{study.study}'")
    if not study.arm_list or set(study.arm_list) - set(ARMS):
        raise UserError(f"ARMS must be rule, fixed or both (\"rule fixed\"), got '{study.arms}'")
    if study.study == "batch" and given & {"bs", "accums"}:
        raise UserError("BS= and ACCUMS= belong to STUDY=accum or norm; STUDY=batch takes BATCH_SIZES=")
    if study.study != "batch" and "batch_sizes" in given:
        raise UserError(f"BATCH_SIZES= belongs to STUDY=batch; STUDY={study.study} takes BS= and ACCUMS=")
    if study.study == "norm" and "norm" in given:
        raise UserError("STUDY=norm trains both norms (group and batch); leave norm= out")
    if study.bs < 1:
        raise UserError(f"BS must be >= 1, got {study.bs}")
    if study.seeds and len(set(study.seeds)) < len(study.seeds):
        raise UserError(f"SEEDS must differ, got '{' '.join(map(str, study.seeds))}'")
    base = config_mod.load(args.config, items)
    if study.fold != "all" and not (study.fold.isdigit() and int(study.fold) < base.folds):
        raise UserError(f"fold must be all or 0..{base.folds - 1}, got '{study.fold}'")
    if study.study == "norm":
        config_mod.validate(dataclasses.replace(base, norm="batch"))  # a model without a norm layer says so here
    return study, cost, base


def point_config(base: Config, point: Point, study: StudySettings, out: Path) -> Config:
    cfg = dataclasses.replace(base, name=point.name, batch_size=point.batch_size, accum=point.accum,
                              norm=point.norm, seed=base.seed if point.seed is None else point.seed,
                              lr_scaling="none" if point.arm == "fixed" else base.lr_scaling,
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
    device = hardware.select_device(cfg.device)
    model = load_fold_model(run_dir, cfg, done[0], device)
    cost = model_cost(model, device, tuple(dict.fromkeys((1, point.batch_size))), cost_settings, cfg)
    single, own = cost["latency"][0], cost["latency"][-1]
    method = cost["energy_method"]
    train_j, train_g = energy(train_s, method["power_w"], method["grid_g_per_kwh"])
    return {
        "point": point.name, "group": point.group, "series": point.series, "kind": point.kind,
        "norm": point.norm, "arm": point.arm, "seed": cfg.seed, "batch_size": point.batch_size, "accum": point.accum,
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


def clock(seconds: float) -> str:
    """1 h 05 min, 12 min, 40 s: how long a study takes, as a person reads it."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def estimate_seconds(cfg: Config, device: torch.device, n_train: int, steps: int = 3) -> float:
    """A point's training time, from `steps` timed optimizer steps of its own config (Trainer.update, as
    train_net steps, on random images, after one untimed step) times the steps of all its epochs;
    validation and the end of a run are not counted, so it is a lower bound of the time."""
    trainer = engine.make_trainer(cfg, device, n_train)
    rows = cfg.effective_batch
    images = torch.randint(0, 256, (rows, 28, 28), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (rows,), device=device)
    data = engine.FoldData(images, labels, torch.arange(rows), torch.arange(0), images[:0])
    window = torch.arange(rows)
    trainer.update(window, data)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.update(window, data)
    if device.type == "cuda":  # the steps are queued, not done, until the GPU is waited for
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - started) / steps
    return per_step * trainer.schedule.total_steps * (cfg.folds if cfg.fold is None else 1)


def announce_plan(points: list[Point], configs: list[Config], pending: list[bool], out: Path) -> float:
    """Print what the study trains and the measured estimate of its time; returns the estimate (s)."""
    base = configs[0]
    rows = base.limit or 42000
    n_train = rows - rows // base.folds
    device = hardware.select_device(base.device)
    cache: dict[tuple, float] = {}  # the seeds of a point take the same time
    total = 0.0
    for cfg, todo in zip(configs, pending):
        if todo:
            key = (cfg.model, cfg.width, cfg.norm, cfg.batch_size, cfg.accum, cfg.epochs)
            if key not in cache:
                cache[key] = estimate_seconds(cfg, device, n_train)
            total += cache[key]
    epochs = sum(cfg.epochs * (cfg.folds if cfg.fold is None else 1) for cfg in configs)
    done = len(points) - sum(pending)
    log.info(f"sweep: {len(points)} points ({', '.join(p.name for p in points)}) into {out}")
    log.info(f"sweep: {epochs} epochs of training in all{f', {done} points finished earlier' if done else ''}; "
             f"estimated {clock(total)} on this machine (timed steps; validation not counted)"
             + (": over an hour, progress and time left follow each point" if total > 3600 else ""))
    return total


def saved_row(record: Path, cfg: Config) -> dict | None:
    if record.is_file():
        saved = fileio.read_json(record)
        if config_mod.same_training(Config(**saved["config"]), cfg):
            return saved["row"]
    return None


def run_points(points: list[Point], base: Config, study: StudySettings, cost: CostSettings, out: Path) -> list[dict]:
    configs = [point_config(base, point, study, out) for point in points]
    records = [out / "points" / f"{point.name}.json" for point in points]
    saved = [saved_row(record, cfg) for record, cfg in zip(records, configs)]
    announce_plan(points, configs, [row is None for row in saved], out)
    epochs_all = sum(cfg.epochs for cfg, row in zip(configs, saved) if row is None)
    epochs_done, seconds_spent = 0, 0.0
    rows = []
    bar = tqdm(points, desc="sweep", unit="point", disable=not base.progress, dynamic_ncols=True)
    for i, (point, cfg, record, row) in enumerate(zip(bar, configs, records, saved)):
        bar.set_postfix_str(f"{point.name}: BS {point.batch_size} x ACCUM {point.accum}")
        if row is not None:
            log.info(f"point {point.name}: finished earlier, skipped")
            rows.append(row)
            continue
        started = time.perf_counter()
        run_dir = finished_run(cfg) or pipeline.train(cfg).run_dir
        row = measure(point, cfg, run_dir, cost)
        fileio.write_json(record, {"config": cfg.to_dict(), "row": row})
        rows.append(row)
        epochs_done += cfg.epochs
        seconds_spent += time.perf_counter() - started
        left = seconds_spent / epochs_done * (epochs_all - epochs_done)  # by epochs trained so far
        log.info(f"point {point.name} ({i + 1}/{len(points)}): accuracy {row['accuracy']:.2%}, "
                 f"{row['train_s']:.0f}s training; {epochs_done}/{epochs_all} epochs of the sweep done, "
                 f"about {clock(left)} left")
    return rows


def settings_note(study: StudySettings, base: Config, rows: list[dict]) -> str:
    first = rows[0]
    folds = "all folds (OOF CV)" if study.fold == "all" else f"fold {study.fold} of {base.folds} (holdout)"
    subset = f"a stratified subset of {first['rows']} rows" if base.limit else f"all {first['rows']} rows"
    model = model_name(base)
    recipe = (f"augmentation +-{base.rotate:g} deg, +-{base.scale:g} zoom, +-{base.shift:g} shift"
              if base.rotate or base.scale or base.shift else "no augmentation")
    recipe += f", EMA {'on' if base.ema else 'off'}, label smoothing {base.label_smoothing:g}"
    return (f"model {model}, {base.epochs} epochs, {subset}, {folds}, optimizer {base.optimizer}, "
            f"lr {base.lr:g} at batch {base.lr_ref_batch} scaled by {base.lr_scaling} of the effective batch "
            f"(the fixed arm: not scaled), {recipe}; "
            f"{first['device']}, torch {torch.__version__}; energy = time x {first['power_w']:g} W, "
            f"CO2eq x {first['grid_g_per_kwh']:g} g/kWh")


MEASURED = ["train_s", "epoch_s", "accuracy", "latency_b1_us", "latency_own_batch_us", "images_per_s_own_batch",
            "infer_energy_mj", "infer_co2eq_ug", "train_energy_wh", "train_co2eq_g"]


def by_group(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per point group: the seeds' mean of every measured figure, their accuracies and their
    sample variance, and the mean per-epoch accuracy curve."""
    out = []
    for _, seeds in frame.groupby("group", sort=False):
        row = seeds.iloc[0].to_dict()
        row.update(seeds[MEASURED].mean().to_dict())
        row["seeds"] = len(seeds)
        row["accuracies"] = " ".join(f"{a:.2%}" for a in seeds["accuracy"])
        row["variance"] = seeds["accuracy"].var() if len(seeds) > 1 else np.nan
        curves = np.array([[float(a) for a in c.split()] for c in seeds["val_acc_per_epoch"]])
        row["val_acc_per_epoch"] = " ".join(f"{a:.4f}" for a in curves.mean(axis=0))
        out.append(row)
    return pd.DataFrame(out)


def seed_sd(groups: pd.DataFrame) -> float:
    """The seed-to-seed standard deviation of accuracy pooled over every point of the study (one pair of
    seeds says little; a dozen pairs say more); NaN with one seed per point."""
    return float(np.sqrt(groups["variance"].mean())) if groups["variance"].notna().any() else np.nan


def noise_bound(sd: float, n1: int, n2: int) -> float:
    """Twice the standard error of the difference of two means of n1 and n2 seeds: sd x sqrt(1/n1 + 1/n2)."""
    return 2 * sd * np.sqrt(1 / n1 + 1 / n2)


def accumulation_verdicts(groups: pd.DataFrame) -> list[str]:
    """Each accumulated point against its micro-batch trained alone and against the true batch of the
    same effective size (same norm and LR arm): the difference of the seeds' means, called noise unless
    it exceeds the noise bound (seed_sd, noise_bound)."""
    pooled = seed_sd(groups)
    lines = []
    for _, acc in groups[groups["accum"] > 1].iterrows():
        same = groups[(groups["norm"] == acc["norm"]) & (groups["accum"] == 1)]
        rivals = [("its micro-batch alone", same[same["batch_size"] == acc["batch_size"]]),
                  ("the true batch", same[(same["batch_size"] == acc["effective_batch"]) & (same["arm"] == acc["arm"])])]
        for what, rival in rivals:
            if rival.empty:
                continue
            other = rival.iloc[0]
            diff = acc["accuracy"] - other["accuracy"]
            line = (f"- {acc['group']} vs {what} ({other['group']}): {acc['accuracy']:.2%} vs "
                    f"{other['accuracy']:.2%}, {100 * diff:+.2f} points")
            if np.isnan(pooled):
                lines.append(line + ": one seed, no noise estimate (give SEEDS=)")
                continue
            noise = noise_bound(pooled, acc["seeds"], other["seeds"])
            verdict = "within noise" if abs(diff) <= noise else "higher" if diff > 0 else "lower"
            lines.append(f"{line}: **{verdict}** (noise: 2 standard errors = {100 * noise:.2f} points, from "
                         f"the seed-to-seed sd {100 * pooled:.2f} points pooled over the study)")
    return lines


def read_rows(out: Path) -> pd.DataFrame:
    """A study's sweep.csv; an accuracy curve is text even when it has one epoch."""
    return pd.read_csv(out / "sweep.csv", dtype={"val_acc_per_epoch": str})


def draw_figures(frame: pd.DataFrame, note: str, out: Path) -> list[str]:
    """The study's PNGs in `out` from its rows (sweep.csv), the accuracy of accumulation against the verdicts'
    noise bound; returns their names."""
    groups = by_group(frame)
    sd, seeds = seed_sd(groups), int(groups["seeds"].min())
    why = (f"2 standard errors of a difference of two {seeds}-seed means\n"
           f"(seed sd {100 * sd:.2f} points, pooled over the study)")
    band_half = None if np.isnan(sd) else 100 * noise_bound(sd, seeds, seeds)
    return plots.study_pngs(frame, groups, note, out, band_half, why)


def redraw(out: Path) -> list[str]:
    """A finished study's PNGs again, from `out`'s sweep.csv and the settings line of its sweep.md: a change
    to the figures needs no retraining."""
    if not (out / "sweep.csv").is_file():
        raise UserError(f"{out}: no sweep.csv to draw from (OUT= names a study's folder)")
    text = (out / "sweep.md").read_text(encoding="utf-8") if (out / "sweep.md").is_file() else ""
    note = re.search(r"^Settings: (.*)\.$", text, flags=re.MULTILINE)
    figures = draw_figures(read_rows(out), note.group(1) if note else "", out)
    log.info(f"redrawn from {out / 'sweep.csv'}: {', '.join(f + '.png' for f in figures)}")
    return figures


def write_outputs(rows: list[dict], study: StudySettings, base: Config, out: Path) -> None:
    note = settings_note(study, base, rows)
    frame = pd.DataFrame(rows).sort_values("effective_batch", kind="stable")  # accumulated beside true
    fileio.write_text(out / "sweep.csv", frame.to_csv(index=False))
    figures = draw_figures(read_rows(out), note, out)  # from the CSV, as redraw draws them again
    groups = by_group(frame)

    table = markdown_table(
        ["point", "BS x ACCUM", "norm", "lr", "training", "per epoch", "accuracy", "seeds", "accuracy per epoch",
         "latency b=1", "latency own batch", "train energy", "CO2eq / inference"],
        [[r["group"], f"{int(r['batch_size'])} x {int(r['accum'])}", r["norm"] if base.model in NORMALISED else "none", f"{r['lr']:.3g}", human(r["train_s"], "s"),
          human(r["epoch_s"], "s"), f"{r['accuracy']:.2%}",
          r["accuracies"] if r["seeds"] > 1 else "1",
          " ".join(f"{100 * float(a):.1f}" for a in r["val_acc_per_epoch"].split()),
          human(r["latency_b1_us"] * 1e-6, "s"), human(r["latency_own_batch_us"] * 1e-6, "s"),
          human(r["train_energy_wh"], "Wh"), human(r["infer_co2eq_ug"] * 1e-6, "gCO2eq")]
         for _, r in groups.iterrows()])
    verdicts = accumulation_verdicts(groups)
    verdict_text = "## Accumulation against its rivals\n\n" + "\n".join(verdicts) + "\n\n" if verdicts else ""
    images = "\n".join(f"![{name}]({name}.png)" for name in figures)
    fileio.write_text(out / "sweep.md", f"# Sweep: STUDY={study.study}\n\nSettings: {note}.\n\n"
                      f"Accuracy: on the {int(groups['holdout_rows'].iloc[0])} held-out rows, the mean over the "
                      f"seeds (each seed listed). Training time: the wall clock of the epochs (training steps "
                      f"and each epoch's validation pass). Latency: median per image of one fold model at "
                      f"batch 1 and at the point's (micro-)batch size.\n\n{table}\n{verdict_text}{images}\n")
    print(table)
    print("\n".join(verdicts))
    log.info(f"sweep outputs in {out}: sweep.csv, sweep.md, {', '.join(f + '.png' for f in figures)}")


def command(args) -> None:
    logs.setup()
    study, cost, base = parse(args)
    hardware.use_host_settings(base)  # before any torch op; also for points whose training is skipped (latency)
    # a fixed default folder, so the same command finds its finished points again
    out = in_project(study.out) if study.out else runs.runs_root(base) / f"sweep-{study.study}-{base.model.replace(':', '_')}"
    if study.redraw:
        redraw(out)
        return
    base = commands.with_data(base)  # as `make train`: local data, else a download, else the demo set
    rows = run_points(plan(study, base), base, study, cost, out)
    write_outputs(rows, study, base, out)
