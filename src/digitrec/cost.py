"""What a model costs: parameters, tensor bytes, FLOPs per image, inference latency and throughput, and
energy and CO2eq per inference, on a named device. `make evaluate` and the sweep measure with these.

FLOPs are counted by torch.utils.flop_counter: 2 per multiply-add, the convention of the MLP write-up's
1,626,112 for 784-1024-10. Latency is timed by torch.utils.benchmark.Timer. Energy is not measured (no
power meter is portable, and offline trackers fall back to the same constants on most machines): it is
latency x an assumed power draw, and CO2eq is that energy x a grid intensity, both configurable and
written beside every number.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import config as config_mod
from . import engine, hardware
from .config import Config
from .errors import UserError
from .models import count_parameters

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
    repeats: int = 30  # time at least as long as this many calls took in the warm-up...
    max_seconds: float = 3.0  # ...but at most this long per batch size
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


def cpu_name() -> str:
    """The CPU's model name: /proc/cpuinfo on Linux, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "CPU"


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


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
                    channels_last: bool = True, amp: bool | str = True) -> list[dict]:
    """Per batch size: the median time of one forward call on uint8 images (made float and laid out as
    in prediction, softmax included), per image and as images per second, with its energy.

    Timed by torch.utils.benchmark.Timer at this process's thread count (it waits for the GPU before
    reading the clock): `warmup` calls first, whose mean sizes the measurement; then adaptive_autorange
    for at least as long as `repeats` such calls, longer until the median is steady (interquartile range
    under 10% of it), and never past max_seconds."""
    from torch.utils import benchmark

    model.eval()
    compute = hardware.precision(device, amp)
    power = power_of(device, settings)
    rows = []
    for batch in batch_sizes:
        images = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8, device=device)

        def once() -> None:
            with hardware.autocast(device, compute):
                model(engine.to_input(images, channels_last)).float().softmax(1)

        timer = benchmark.Timer("once()", globals={"once": once}, num_threads=torch.get_num_threads())
        warm = timer.timeit(max(settings.warmup, 1))  # one call at least: its time sizes the run below
        budget = min(settings.repeats * warm.mean, settings.max_seconds)
        measured = timer.adaptive_autorange(min_run_time=budget, max_run_time=settings.max_seconds)
        seconds = measured.median
        joules, grams = energy(seconds / batch, power, settings.grid_g_per_kwh)
        rows.append({"batch": batch, "batch_seconds": seconds, "latency_s": seconds / batch,
                     "images_per_s": batch / seconds, "repeats": measured.number_per_run * len(measured.raw_times),
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


def ensemble_cost(run_dir: Path, cfg: Config, device: torch.device) -> dict:
    """What the submission costs per image: every net it averages (test_probs.npy holds one slice per
    net), each member's parameters and FLOPs counted once on its own model."""
    members = config_mod.member_configs(cfg)
    per_member = []
    for member in members:
        model = engine.build_net(member, device)
        per_member.append({"model": member.model, "width": member.width, "params": count_parameters(model),
                           "flops_per_image": flops_per_image(model, device)})
    nets = int(np.load(run_dir / "test_probs.npy", mmap_mode="r").shape[0])
    copies = nets // len(members)  # the submission holds each member once per fold, or once (refit)
    return {"nets_in_submission": nets, "members": per_member,
            "params": sum(m["params"] for m in per_member) * copies,
            "flops_per_image": sum(m["flops_per_image"] for m in per_member) * copies}
