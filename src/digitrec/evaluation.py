"""`make evaluate [RUN=]`: what a trained run's model costs and how accurate it is.

Cost: size on disk (the fold's weights.pt), parameters, FLOPs per image (counted by
torch.utils.flop_counter: 2 per multiply-add, the convention of the MLP write-up's 1,626,112 for
784-1024-10), inference latency per image at several batch sizes (warm-up, then the median of
repeats, on a named device), throughput, and energy and CO2eq per inference. Energy is not measured
(no power meter is portable, and offline trackers fall back to the same constants on most machines):
it is latency x an assumed power draw, and CO2eq is that energy x a grid intensity, both configurable
and written beside every number. Accuracy is the out-of-fold CV accuracy, overall and per class.

The sweep (studies.py) measures its points with the same functions.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from . import config as config_mod
from . import engine, fileio, pipeline, plots, runs
from .config import Config
from .errors import UserError
from .models import count_parameters, model_from_config

# Assumed power while the device works flat out, in W: a desktop CPU package under load, and a
# data-centre GPU board. The real draw varies 2-5x between machines: give yours with power_w=.
DEFAULT_POWER_W = {"cpu": 65.0, "cuda": 300.0}
# gCO2eq per kWh: the world-average intensity CodeCarbon falls back to (IEA); set grid_g_per_kwh=.
DEFAULT_GRID_G_PER_KWH = 475.0
JOULES_PER_KWH = 3.6e6


@dataclass
class CostSettings:
    """The evaluate (and sweep) settings given as KEY=VALUE; none of them changes a model."""

    latency_batches: tuple[int, ...] = (1, 16, 128, 1024)
    warmup: int = 3  # untimed calls first: allocator, caches, lazy init
    repeats: int = 30  # timed calls per batch size; the median is reported
    max_seconds: float = 3.0  # ...but stop repeating a batch size after this long (3 calls at least)
    power_w: float | None = None  # None: DEFAULT_POWER_W of the device type
    grid_g_per_kwh: float = DEFAULT_GRID_G_PER_KWH
    worst: int = 32  # mistakes shown in mistakes.png
    device: str | None = None  # None: the run's own device setting

    def validate(self) -> CostSettings:
        if self.warmup < 0 or self.repeats < 1 or self.max_seconds <= 0 or self.worst < 0:
            raise UserError("need warmup >= 0, repeats >= 1, max_seconds > 0 and worst >= 0")
        if (self.power_w is not None and self.power_w <= 0) or self.grid_g_per_kwh < 0:
            raise UserError("need power_w > 0 and grid_g_per_kwh >= 0")
        return self


# ---------------------------------------------------------------- KEY=VALUE settings of a dataclass


def normalize_keys(items: dict[str, str]) -> dict[str, str]:
    return {k.strip().lower().replace("-", "_"): v for k, v in items.items()}


def _parse(key: str, raw: str, hint: Any) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if any(typing.get_origin(t) is tuple for t in allowed):  # a list such as BATCH_SIZES="1 16 64 128"
        try:
            values = tuple(int(v) for v in raw.replace(",", " ").split())
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise UserError(f"{key} must be whole numbers >= 1 separated by spaces, got '{raw}'")
        return values
    if str in allowed:
        return raw
    value = yaml.safe_load(raw) if raw.strip() else None
    if value is None and type(None) in allowed:
        return None
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tuple(t for t in allowed if t is not type(None))) and not isinstance(value, bool):
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise UserError(f"{key} must be {names}, got '{raw}'")


def take_settings(kind: type, items: dict[str, str]) -> Any:
    """Build dataclass `kind` from the items (normalized KEY=VALUE strings) that name its fields,
    removing them from items so the caller can hand the rest on."""
    hints = typing.get_type_hints(kind)
    values = {f.name: _parse(f.name, items.pop(f.name), hints[f.name])
              for f in dataclasses.fields(kind) if f.name in items}
    return kind(**values)


# ---------------------------------------------------------------- cost of one model


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        import platform

        name = platform.processor() or name
    return f"{name} ({torch.get_num_threads()} threads)"


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the tensors a weights file holds: the lower bound of its size on disk."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def flops_per_image(model: nn.Module, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 1, 28, 28, device=device))
    return int(counter.get_total_flops())


def energy(seconds: float, power_w: float, grid_g_per_kwh: float) -> tuple[float, float]:
    """(joules, grams of CO2eq) for `seconds` at a constant `power_w`."""
    joules = seconds * power_w
    return joules, joules / JOULES_PER_KWH * grid_g_per_kwh


def power_of(device: torch.device, settings: CostSettings) -> float:
    return settings.power_w if settings.power_w is not None else DEFAULT_POWER_W[device.type]


def energy_method(device: torch.device, settings: CostSettings) -> dict:
    given = settings.power_w is not None
    return {
        "power_w": power_of(device, settings),
        "power_source": "given (power_w=)" if given else f"assumed default for {device.type} (set power_w=)",
        "grid_g_per_kwh": settings.grid_g_per_kwh,
        "formula": "energy = time x power (constant draw assumed); CO2eq = energy x grid intensity",
    }


@torch.inference_mode()
def measure_latency(model: nn.Module, device: torch.device, batch_sizes: tuple[int, ...], settings: CostSettings,
                    channels_last: bool = True, amp: bool = True) -> list[dict]:
    """Per batch size: the median time of one forward call on uint8 images (made float and laid out as
    in prediction, softmax included), per image and as images per second, with its energy."""
    model.eval()
    power = power_of(device, settings)
    rows = []
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, device=device)

        def once() -> float:
            started = time.perf_counter()
            with engine.autocast(device, amp):
                model(engine.to_input(images, channels_last)).float().softmax(1)
            if device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize(device)
            return time.perf_counter() - started

        for _ in range(settings.warmup):
            once()
        times: list[float] = []
        deadline = time.perf_counter() + settings.max_seconds
        while len(times) < settings.repeats and (len(times) < 3 or time.perf_counter() < deadline):
            times.append(once())
        seconds = statistics.median(times)
        joules, grams = energy(seconds / batch, power, settings.grid_g_per_kwh)
        rows.append({"batch": batch, "batch_seconds": seconds, "latency_s": seconds / batch,
                     "images_per_s": batch / seconds, "repeats": len(times),
                     "energy_j": joules, "co2eq_g": grams})
    return rows


def model_cost(model: nn.Module, device: torch.device, batch_sizes: tuple[int, ...], settings: CostSettings,
               cfg: Config) -> dict:
    """Parameters, tensor bytes, FLOPs per image and latency/energy per batch size of a model on device."""
    return {
        "params": count_parameters(model),
        "tensor_bytes": tensor_bytes(model),
        "flops_per_image": flops_per_image(model, device),
        "device": describe_device(device),
        "latency": measure_latency(model, device, batch_sizes, settings, cfg.channels_last, cfg.amp),
        "warmup": settings.warmup,
        "energy_method": energy_method(device, settings),
    }


def load_fold_model(run_dir: Path, cfg: Config, fold: int, device: torch.device) -> nn.Module:
    """Fold `fold`'s net of the run's first ensemble member."""
    return pipeline.load_net(runs.unit_dir(run_dir, fold, 0), config_mod.member_configs(cfg)[0], device)


def ensemble_cost(run_dir: Path, cfg: Config, device: torch.device) -> dict:
    """What the submission costs per image: every net it averages (test_probs.npy holds one slice per
    net), each member's parameters and FLOPs counted once on its own model."""
    members = config_mod.member_configs(cfg)
    per_member = []
    for member in members:
        model = model_from_config(member).to(device)
        per_member.append({"model": member.model, "width": member.width, "params": count_parameters(model),
                           "flops_per_image": flops_per_image(model, device)})
    nets = int(np.load(run_dir / "test_probs.npy", mmap_mode="r").shape[0])
    copies = nets // len(members)  # the submission holds each member once per fold, or once (refit)
    return {"nets_in_submission": nets, "members": per_member,
            "params": sum(m["params"] for m in per_member) * copies,
            "flops_per_image": sum(m["flops_per_image"] for m in per_member) * copies}


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


def evaluate_run(run_dir: Path, settings: CostSettings) -> dict:
    """evaluation.json, evaluation.md, confusion.png and mistakes.png in run_dir; returns the JSON."""
    if not runs.is_complete(run_dir):
        raise UserError(f"{run_dir}: the run is not finished (no metrics.json); rerun its `make train` to complete it")
    saved = pipeline.open_run(run_dir, {"device": settings.device} if settings.device else None)
    cfg, record, dataset, rows, fold_of = saved.cfg, saved.record, saved.dataset, saved.rows, saved.fold_of
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    metrics = fileio.read_json(run_dir / "metrics.json")
    done = metrics["folds_done"]
    device = engine.select_device(cfg.device)

    weights = runs.unit_dir(run_dir, done[0], 0) / "weights.pt"
    model = load_fold_model(run_dir, cfg, done[0], device)
    cost = model_cost(model, device, settings.latency_batches, settings, cfg)
    cost["submission"] = ensemble_cost(run_dir, cfg, device)
    accuracy = metrics["oof"]
    result = {"run": str(run_dir), "model": cfg.model, "data": record["source"], "demo_data": record["demo"],
              "folds_done": done, "folds_total": cfg.folds, "size_bytes": weights.stat().st_size, **cost,
              "accuracy": accuracy["accuracy"], "log_loss": accuracy["log_loss"], "oof_rows": accuracy["rows"],
              "per_class": accuracy["per_class"], "confusion": accuracy["confusion"]}
    first = result["latency"][0]
    # the write-up's one-line summary, with its keys, for a side-by-side comparison
    result["summary"] = {"size": human(result["size_bytes"], "B"), "params": result["params"],
                         "flops": result["flops_per_image"], "latency": human(first["latency_s"], "s"),
                         "accuracy": f"{result['accuracy']:.1%}", "CO2eq": human(first["co2eq_g"], "gCO2eq")}
    fileio.write_json(run_dir / "evaluation.json", result)

    title = f"{run_dir.name}: OOF accuracy {result['accuracy']:.2%} over {result['oof_rows']} rows"
    plots.confusion_png(accuracy["confusion"], run_dir / "confusion.png", title)
    oof = np.load(run_dir / "oof_probs.npy")
    covered = np.flatnonzero(np.isin(fold_of, done))
    labels = dataset.train_labels[rows][covered]
    probs = oof[covered]
    predicted, confidence = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][: settings.worst]  # most confident first
    plots.mistakes_png(dataset.train_images[rows][covered][worst], labels[worst], predicted[worst],
                       confidence[worst], run_dir / "mistakes.png",
                       f"the {len(worst)} most confident of {len(wrong)} out-of-fold mistakes")
    table = report(result)
    fileio.write_text(run_dir / "evaluation.md", table)
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
        f"# Evaluation of {Path(result['run']).name}\n\n"
        f"Model `{result['model']}`, data {result['data']}; {n_models} of {result['folds_total']} folds "
        f"trained, accuracy out-of-fold over {result['oof_rows']} rows. Cost of one net (member 0) on "
        f"{result['device']}; the submission averages {n_models} net{'s' if n_models > 1 else ''} "
        f"({len(sub['members'])} member{'s' if len(sub['members']) > 1 else ''}): {sub['params']:,} parameters "
        f"and {sub['flops_per_image']:,} FLOPs per image in all.\n\n{summary}\n"
        f"## Latency by batch size\n\nMedian of up to {max(r['repeats'] for r in result['latency'])} timed calls "
        f"after {result['warmup']} warm-up calls, uint8 images in, probabilities out.\n\n{latency}\n"
        f"## Accuracy per class (out-of-fold)\n\n{per_class}\n"
        f"## Method\n\nSize: the weights file on disk ({result['tensor_bytes']:,} bytes of tensors). FLOPs: counted "
        f"by torch.utils.flop_counter on one image, 2 per multiply-add. Energy: {method['formula']}; power "
        f"{method['power_w']:g} W, {method['power_source']}; grid {method['grid_g_per_kwh']:g} gCO2eq/kWh "
        f"(set grid_g_per_kwh=).\n\n![confusion matrix](confusion.png)\n\n![worst mistakes](mistakes.png)\n")


def command(args) -> None:
    items = normalize_keys(config_mod.parse_overrides(args.overrides))
    settings = take_settings(CostSettings, items).validate()
    if items:
        known = ", ".join(f.name for f in dataclasses.fields(CostSettings))
        raise UserError(f"unknown evaluate setting(s) {', '.join(items)}; known: {known}")
    evaluate_run(runs.resolve_run(args.run, args.runs_dir), settings)
