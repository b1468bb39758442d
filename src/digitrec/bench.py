"""`make bench`: how fast this pipeline trains, predicts and loads data, against the conventional
per-sample path and against what the machine can do; one run, a readable table, then one JSON line.

What is measured, each after a warm-up and as the median of several repeats:
  train          images/s of `make train`'s own training: the set-up engine.make_trainer builds (net,
                 optimizer, LR schedule, EMA, compile) stepped by Trainer.update over the windows
                 Trainer.start_epoch draws, the calls train_net makes, at BS x ACCUM
  stacked        images/s over all nets of K nets in one step (stacked.StackedTrainer.update, what
                 nets_per_step > 1 trains with), each on its own windows of BS x ACCUM: K = 5 and 10 on a GPU,
                 5 on the CPU, 2 in a quick run (stacks= sets them)
  conventional   the same model, augmentation, optimizer and loss fed the way most public kernels do:
                 pandas row -> PIL image -> torchvision RandomAffine + ToTensor -> DataLoader(2 workers)
  FLOP limit     fp32 GEMM FLOP/s at the same thread count, and the model's training FLOPs per image
                 (FlopCounterMode), so train images/s x FLOPs/image / GEMM FLOP/s is the fraction reached
  predict        seconds for the test rows per fold model (engine.predict_proba) and for the ensemble
  data           parsing train.csv + test.csv with no cache, and data.load with a warm cache
  memory         peak RSS of `python -m digitrec train` (default settings; one epoch, one fold, 5000 rows)

Settings: the config's keys (BS=, ACCUM=, DATA=, threads=, device=, compile=, ...; ACCUM defaults to 8
here) and quick=1 (fewer steps and rows: the sub-minute check before a commit to the engine,
augmentation or data path, and the tests' smoke run), record=1 (store the figures as this machine's
reference; a quick run's apart from the full one's), results=PATH (the reference file, default
benchmarks/results.json). Every run compares itself with the figures recorded for its machine, names what
got worse, and warns when the recorded figures came from another torch (bench_results.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import config as config_mod
from . import data as data_mod
from . import bench_results, commands, engine, hardware, logs, planner, stacked
from .config import Config
from .errors import UserError
from .settings import parse_items, take

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does; quick=1 shrinks everything to a smoke test."""

    train_steps: int  # optimizer steps (of BS x ACCUM images) per timed repeat
    conventional_steps: int
    repeats: int
    gemm_n: int
    # training rows for the memory run: the peak comes from parsing the CSVs, the data and the test
    # predictions, which every run has in full, not from how many steps it trains
    rss_limit: int
    predict_rows: int | None  # test rows the prediction timings predict (None: all)


FULL = Plan(train_steps=8, conventional_steps=4, repeats=3, gemm_n=4096, rss_limit=5000, predict_rows=None)
# the check a developer runs before committing a change to the engine, augmentation or data path: under a
# minute on the 2-core CPU, compared with a quick run recorded on the same machine
QUICK = Plan(train_steps=3, conventional_steps=1, repeats=3, gemm_n=1024, rss_limit=200, predict_rows=5000)


# ---------------------------------------------------------------- timing helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(run: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median wall time of run() over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# ---------------------------------------------------------------- training throughput


def _training_data(cfg: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> engine.FoldData:
    """The training rows on the device, in whole windows only, so every timed step is BS x ACCUM images; a set
    smaller than one window (the demo set at ACCUM=8) is drawn with replacement up to one."""
    n, window = len(labels), cfg.effective_batch
    rows = torch.arange(n - n % window) if n >= window else torch.randint(
        n, (window,), generator=torch.Generator().manual_seed(cfg.seed))
    return engine.FoldData(images.to(device), labels.to(device), rows, rows[:0], images[:0])


def _endless_windows(data: engine.FoldData, seed: int, window: int):
    order = torch.Generator().manual_seed(seed)
    return itertools.chain.from_iterable(engine.epoch_windows(data.train_idx, order, window) for _ in itertools.count())


def train_throughput(cfg: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                     plan: Plan) -> float:
    """Images/s of train_net's loop: engine.make_trainer's set-up, Trainer.update over the windows of
    Trainer.start_epoch."""
    torch.manual_seed(cfg.seed)
    data = _training_data(cfg, images, labels, device)
    trainer = engine.make_trainer(cfg, device, len(data.train_idx))
    trainer.model.train()
    windows = _endless_windows(data, cfg.seed, cfg.effective_batch)

    def steps() -> None:
        for _ in range(plan.train_steps):
            trainer.update(next(windows), data)

    seconds = _median_seconds(steps, plan.repeats, device)
    return plan.train_steps * cfg.effective_batch / seconds


def stacked_throughput(cfg: Config, images: torch.Tensor, labels: torch.Tensor, device: torch.device, plan: Plan,
                       nets: int) -> float:
    """Images/s over all nets of `nets` nets stepped together by stacked.StackedTrainer.update, each on its own
    windows of the same rows; a timed repeat takes about as many images as train_throughput's (at least one
    step)."""
    data = _training_data(cfg, images, labels, device)
    seeds = [cfg.seed + i for i in range(nets)]
    trainer = stacked.StackedTrainer(cfg, seeds, device, len(data.train_idx))
    trainer.train()
    windows = [_endless_windows(data, seed, cfg.effective_batch) for seed in seeds]
    count = max(1, plan.train_steps // nets)

    def steps() -> None:
        for _ in range(count):
            trainer.update([next(w) for w in windows], [data] * nets)

    seconds = _median_seconds(steps, plan.repeats, device)
    return count * nets * cfg.effective_batch / seconds


class _RowDataset(torch.utils.data.Dataset):
    """The conventional input path: one pandas row at a time -> PIL image -> torchvision transforms."""

    def __init__(self, frame, transform):
        self.frame, self.transform = frame, transform

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int):
        from PIL import Image

        row = self.frame.iloc[i]
        image = Image.fromarray(row.iloc[1:].to_numpy(dtype=np.uint8).reshape(28, 28))
        return self.transform(image), int(row.iloc[0])


def conventional_throughput(cfg: Config, images: np.ndarray, labels: np.ndarray, device: torch.device,
                            plan: Plan, precision: str = "fp32") -> float:
    """Images/s of the same model, augmentation, optimizer and loss through a per-sample DataLoader.
    The model keeps PyTorch's default layout and there is no EMA: what a typical kernel runs, in fp32
    unless told our precision (to separate what the data path gives from what mixed precision gives)."""
    import pandas as pd
    from torchvision import transforms

    frame = pd.DataFrame(np.column_stack([labels, images.reshape(len(images), -1)]), columns=data_mod.TRAIN_HEADER)
    # the same random rotation, scale and shift as augment.random_affine, bilinear as it samples
    transform = transforms.Compose([
        transforms.RandomAffine(degrees=cfg.rotate, translate=(cfg.shift, cfg.shift),
                                scale=(1 - cfg.scale, 1 + cfg.scale),
                                interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor()])
    loader = torch.utils.data.DataLoader(
        _RowDataset(frame, transform), batch_size=cfg.batch_size, num_workers=2, persistent_workers=True,
        pin_memory=device.type == "cuda",
        # sampling with replacement never runs out, so the timed steps never wait for an epoch restart
        sampler=torch.utils.data.RandomSampler(frame, replacement=True, num_samples=10**9))
    torch.manual_seed(cfg.seed)
    model = engine.build_net(dataclasses.replace(cfg, channels_last=False), device)
    optimizer, _ = engine.make_optimizer(model, cfg, engine.Schedule(len(frame), cfg))
    batches = iter(loader)

    def steps() -> None:
        for _ in range(plan.conventional_steps):
            for _ in range(cfg.accum):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with hardware.autocast(device, precision):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                (loss / cfg.accum).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    try:
        seconds = _median_seconds(steps, plan.repeats, device)
    finally:
        del batches  # shuts the persistent workers down
    return plan.conventional_steps * cfg.accum * cfg.batch_size / seconds


# ---------------------------------------------------------------- the machine's limit


def gemm_flop_s(device: torch.device, n: int, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matmul: what this device and thread count can do on dense work."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if device.type == "cuda":  # the fp32 figure, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), repeats, device)


def train_flops_per_image(cfg: Config) -> float:
    """FLOPs of one forward + backward per image, as FlopCounterMode counts them (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = engine.build_net(cfg, torch.device("cpu"))
    x = torch.rand(cfg.batch_size, 1, 28, 28)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    return counter.get_total_flops() / cfg.batch_size


# ---------------------------------------------------------------- inference


def predict_timings(cfg: Config, test_images: torch.Tensor, device: torch.device, plan: Plan) -> tuple[float, float]:
    """(seconds per fold model, seconds for the whole fold ensemble) to predict the test rows without TTA, with
    nets from engine.build_net as `make predict` loads them (weights do not change the cost)."""
    models = []
    for fold in range(cfg.folds):
        torch.manual_seed(fold)
        models.append(engine.build_net(cfg, device))
    images = test_images[:plan.predict_rows].to(device)
    # plain prediction: TTA (tta=true) multiplies this by its five views, and is a choice, not a cost
    per_fold = _median_seconds(lambda: engine.predict_proba(models[0], images, cfg, device, tta=False),
                               plan.repeats, device)
    ensemble = _median_seconds(
        lambda: np.mean([engine.predict_proba(m, images, cfg, device, tta=False) for m in models], axis=0),
        1, device, warmup=0)
    return per_fold, ensemble


# ---------------------------------------------------------------- data


def data_timings(source: data_mod.Source, plan: Plan) -> tuple[float, float]:
    """(cold, cached) seconds: parsing and validating the three files from their bytes (no cache), as
    data.load does on a first run; data.load once its cache (in a temp folder) is warm."""
    raws = {name: source.read(name) for name in data_mod.FILES}
    cold = _median_seconds(lambda: data_mod.parse_all(raws, source), plan.repeats, torch.device("cpu"), warmup=0)
    with tempfile.TemporaryDirectory(prefix="digitrec-bench-") as tmp:
        cached = _median_seconds(lambda: data_mod.load(source, cache=Path(tmp)), plan.repeats, torch.device("cpu"))
    return cold, cached


# ---------------------------------------------------------------- memory


def peak_rss_gib(config_path: str, overrides: list[str], source: data_mod.Source, plan: Plan) -> float:
    """Peak resident memory of a training process: one epoch of fold 0 of a stratified subset with the
    default settings, in a temp working directory, so the CSVs are parsed cold as on a first `make train`.
    Without TTA: its views add a few MB a batch, and nine passes over the test rows took most of a minute."""
    settings = [*overrides, f"data={source.path.resolve()}", "epochs=1", "fold=0", f"limit={plan.rss_limit}",
                "name=bench-memory", "progress=false", "tta=false"]
    command = [sys.executable, "-m", "digitrec", "train", "--config", str(Path(config_path).resolve()), *settings]
    src = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="digitrec-bench-") as tmp, open(Path(tmp) / "log", "w+") as output:
        process = subprocess.Popen(command, cwd=tmp, env={**env, "DIGITREC_ROOT": tmp}, stdout=output,
                                   stderr=subprocess.STDOUT)
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would also count the DataLoader workers
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            output.seek(0)
            raise UserError(f"bench: the memory run `{' '.join(command)}` failed:\n{output.read()[-2000:]}")
    return usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------- the command


@dataclass
class BenchSettings:
    """The bench's own KEY=VALUE settings; every other one is a config setting."""

    quick: bool = False  # a few steps on small sizes, for tests
    record: bool = False  # store the figures as this machine's reference
    results: str = bench_results.DEFAULT_RESULTS
    stacks: tuple[int, ...] | None = None  # nets per stacked step to time; None: 5 10 on a GPU, 5 on the CPU, 2 quick


def default_stacks(device: torch.device, plan: Plan) -> tuple[int, ...]:
    if plan is QUICK:
        return (2,)
    return (5, 10) if device.type == "cuda" else (5,)


def layout_rates(cfg: Config, dataset: data_mod.Dataset, device: torch.device) -> dict[str, dict]:
    """The step rates `make train BUDGET=` plans from, measured as it measures them (planner.measure): every
    layout of the ladder at the config's own BS x ACCUM, with each number of nets per step it would try."""
    data = planner.timing_data(dataset, device)
    stacks = planner.stack_candidates(cfg, device, cfg.folds)
    rates = {planner.layout_name(layout): planner.measure(planner.layout_config(cfg, layout), device, data, stacks)
             for layout in planner.ladder(cfg)}
    for line in planner.describe_rates(rates):
        log.info(f"bench: {line}")
    return {name: dataclasses.asdict(rate) for name, rate in rates.items()}


def run(cfg: Config, overrides: list[str], config_path: str, plan: Plan, stacks: tuple[int, ...] | None = None,
        planned: Config | None = None) -> dict:
    """Every measurement, in an order that keeps them apart: the memory run first (a child process,
    nothing else running), then data, the GEMM, training (one net, then stacked nets), the conventional path,
    prediction, and the step rates a budget is planned from (`planned`: the config as `make train` runs it)."""
    hardware.use_host_settings(cfg)
    device = hardware.select_device(cfg.device)
    threads = torch.get_num_threads()
    source = commands.find_or_fetch_data(cfg.data)
    if source.demo:
        print(data_mod.demo_notice(), file=sys.stderr)
    log.info(f"bench: {device} ({threads} threads), {cfg.model}, BS {cfg.batch_size} x ACCUM {cfg.accum}, "
             f"data {source.describe()}{', quick' if plan is QUICK else ''}")
    dataset = data_mod.load(source)

    started = time.perf_counter()

    def stage(name: str, measure: Callable[[], object]):
        log.info(f"bench: {name} ...")
        value = measure()
        log.info(f"bench: {name} done at {time.perf_counter() - started:.0f}s")
        return value

    rss = stage("peak memory of a training process", lambda: peak_rss_gib(config_path, overrides, source, plan))
    csv_cold, csv_cached = stage("data loading", lambda: data_timings(source, plan))
    gemm = stage("GEMM", lambda: gemm_flop_s(device, plan.gemm_n, plan.repeats))
    compute = hardware.precision(device, cfg.amp)
    mixed = compute != "fp32"
    half = torch.bfloat16 if compute == "bf16" else torch.float16
    gemm_mixed = stage(f"{compute} GEMM", lambda: gemm_flop_s(device, plan.gemm_n, plan.repeats, half)) if mixed else gemm
    flops = train_flops_per_image(cfg)
    images, labels = torch.from_numpy(dataset.train_images), torch.from_numpy(dataset.train_labels)
    ours = stage("training, our pipeline", lambda: train_throughput(cfg, images, labels, device, plan))
    stacked_figures = {}
    unstackable = stacked.why_not_stacked(cfg)
    if unstackable:
        log.info(f"bench: no stacked timing: {cfg.model} nets train one per step here ({unstackable})")
    for nets in () if unstackable else (stacks or default_stacks(device, plan)):
        img_per_s = stage(f"training, {nets} nets stacked", lambda: stacked_throughput(
            cfg, images, labels, device, plan, nets))
        stacked_figures.update({f"stacked{nets}_img_per_s": img_per_s, f"stacked{nets}_speedup": img_per_s / ours})
    conventional = stage("training, conventional path", lambda: conventional_throughput(
        cfg, dataset.train_images, dataset.train_labels, device, plan))
    # the comparison that counts is with a typical (fp32) kernel; the same path under our autocast shows how
    # much of the speed-up is the in-memory data path and how much is mixed precision
    conventional_mixed = stage(f"training, conventional path with {compute} autocast", lambda: conventional_throughput(
        cfg, dataset.train_images, dataset.train_labels, device, plan, precision=compute)) if mixed else conventional
    per_fold, ensemble = stage("prediction", lambda: predict_timings(
        cfg, torch.from_numpy(dataset.test_images), device, plan))
    test_rows = len(dataset.test_images[:plan.predict_rows])
    layouts = stage("the step rates BUDGET= plans from", lambda: layout_rates(planned or cfg, dataset, device))

    figures = {
        "train_img_per_s": ours, **stacked_figures, "conventional_img_per_s": conventional,
        "speedup": ours / conventional,
        "conventional_same_precision_img_per_s": conventional_mixed, "speedup_same_precision": ours / conventional_mixed,
        "gemm_gflop_s": gemm / 1e9, "train_mflop_per_img": flops / 1e6, "flop_limit_fraction": ours * flops / gemm,
        # the limit in the precision the step runs in (= the fp32 figures in fp32); the keys say bf16 for
        # the figures recorded before fp16 existed
        "gemm_bf16_gflop_s": gemm_mixed / 1e9, "bf16_limit_fraction": ours * flops / gemm_mixed,
        "predict_s_per_fold": per_fold, "predict_img_per_s": test_rows / per_fold,
        "ensemble_s": ensemble, "ensemble_img_per_s": test_rows / ensemble,
        "csv_cold_s": csv_cold, "csv_cached_s": csv_cached, "peak_rss_gib": rss,
    }
    return {**{k: round(v, 4) for k, v in figures.items()},
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": threads, "machine": bench_results.machine_id(device, threads), "model": cfg.model,
            "precision": compute,
            "batch_size": cfg.batch_size, "accum": cfg.accum, "folds": cfg.folds, "test_rows": test_rows,
            "quick": plan is QUICK, "demo": source.demo, "torch": torch.__version__, "layouts": layouts}


def command(args: argparse.Namespace) -> None:
    logs.setup()
    items = parse_items(args.overrides)
    ours = take(BenchSettings, items)
    overrides = [f"{key}={value}" for key, value in items.items()]  # also handed to the memory run's child
    quick, keep = ours.quick, ours.record
    results_path = Path(ours.results)
    # ACCUM=8 is the setting of the recorded throughput figures; an explicit ACCUM= still wins
    cfg = config_mod.load(args.config, ["accum=8", *overrides])

    # the budget's rates at the config's own step, as `make train BUDGET=` would time them
    result = run(cfg, overrides, args.config, QUICK if quick else FULL, ours.stacks,
                 planned=config_mod.load(args.config, overrides))
    previous = bench_results.read_results(results_path).get(bench_results.record_key(result))
    lines, worse = bench_results.compare(result, previous)
    baseline = previous if previous is not None and bench_results.comparable(previous, result) else None
    print()
    print(bench_results.table(result, baseline))
    print(f"\nagainst {results_path}:")
    print("\n".join(lines))
    print("\nstep rates BUDGET= plans from (images/s; over all nets of a step):")
    print("\n".join(planner.describe_rates({name: planner.Rates({int(k): v for k, v in rate["train"].items()},
                                                                  rate["predict"])
                                            for name, rate in result["layouts"].items()})))
    if keep:
        key = bench_results.record_key(result)
        bench_results.record(results_path, key, result)
        print(f"recorded as the reference for '{key}' in {results_path}")
    result.update(baseline=baseline["recorded"] if baseline else None, regressions=[w["key"] for w in worse])
    print(json.dumps(result))
