"""Training and prediction for one net (a fold's member, or a refit member): the only training loop in the project.

The whole training set lives on the device as one uint8 tensor; a batch is an index tensor into it,
turned to float and augmented on the device in one call. The optimizer steps once per window of
`accum` micro-batches, and each micro-batch's summed loss is divided by the number of images in its
window, so one step equals one step on the whole window as a single batch - also for the short
window at the end of an epoch.
"""
from __future__ import annotations

import functools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import fileio
from .augment import random_affine, tta_views
from .config import Config
from .distributed import ALONE, Ranks, gather, sum_
from .errors import TrainingDiverged, UserError
from .models import model_from_config

Log = Callable[[str], None]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}: CUDA is not available on this machine (use device=cpu or auto)")
    return torch.device(name)


def to_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1], in the layout the model runs fastest in."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@functools.cache  # asked before every forward pass; the answer never changes within a process
def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32, so amp=true falls back to fp32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def uses_bf16(device: torch.device, amp: bool) -> bool:
    """Whether amp=true means bf16 on this device (the one rule autocast and the bench both follow)."""
    return amp and native_bf16(device)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where the hardware has it; the loss and softmax are taken in fp32 by the callers."""
    if uses_bf16(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor, cfg: Config, device: torch.device,
                  tta: bool = False) -> np.ndarray:
    """Softmax probabilities (N, 10) as float32 numpy, in batches of eval_batch_size."""
    if len(images) == 0:  # a refit's held-out rows
        return np.zeros((0, 10), dtype=np.float32)
    model.eval()
    out = []
    for batch in images.split(cfg.eval_batch_size):
        x = to_input(batch.to(device, non_blocking=True), cfg.channels_last)
        views = tta_views(x) if tta else [x]
        with autocast(device, cfg.amp):
            probs = sum(F.softmax(model(v).float(), dim=1) for v in views) / len(views)
        out.append(probs.cpu())
    return torch.cat(out).numpy().astype(np.float32)


@dataclass
class FoldData:
    """Tensors already on the device: all training images and labels, this fold's index split, test."""

    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64
    train_idx: torch.Tensor  # (n_train,) int64, on the CPU (the permutation is drawn there)
    val_idx: torch.Tensor
    test_images: torch.Tensor


@dataclass
class FoldOutput:
    val_probs: np.ndarray
    test_probs: np.ndarray
    history: list[dict]


class Schedule:
    """How many optimizer steps an epoch has: windows of accum micro-batches (on every data-parallel
    rank), the last one possibly short."""

    def __init__(self, n_train: int, cfg: Config):
        self.window = cfg.effective_batch
        self.steps_per_epoch = math.ceil(n_train / self.window)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # a short run (EPOCHS=1) keeps at least half of its steps out of warm-up
        self.warmup_steps = min(round(cfg.warmup_epochs * self.steps_per_epoch), self.total_steps // 2)


def make_optimizer(model: nn.Module, cfg: Config, schedule: Schedule):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    lr = cfg.scaled_lr
    try:
        optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay)
    except ValueError as e:  # timm: "Optimizer x not found in registry"
        import difflib

        from timm.optim import list_optimizers

        near = difflib.get_close_matches(cfg.optimizer.lower(), list_optimizers(), n=3)
        hint = f" (did you mean {' or '.join(near)}?)" if near else " (see timm.optim.list_optimizers())"
        raise UserError(f"optimizer '{cfg.optimizer}' is not a timm optimizer{hint}: {e}") from None
    # the schedule counts optimizer steps (t_in_epochs=False), so it is the same whatever BS x ACCUM is
    scheduler = CosineLRScheduler(
        optimizer, t_initial=max(1, schedule.total_steps - schedule.warmup_steps), lr_min=lr * cfg.min_lr_ratio,
        warmup_t=schedule.warmup_steps, warmup_lr_init=lr * 0.01, warmup_prefix=True, t_in_epochs=False)
    return optimizer, scheduler


def preflight(cfg: Config, device_name: str | None = None) -> torch.device:
    """The device (cfg.device, or this rank's own), and the model and optimizer built once, before a
    run writes anything: a setting only torch or timm can check (device=cuda without CUDA,
    timm:<name>, optimizer) fails here."""
    device = select_device(device_name or cfg.device)
    model = model_from_config(cfg)
    make_optimizer(model, cfg, Schedule(100 * cfg.effective_batch, cfg))  # 100 steps an epoch: no timm warning
    return device


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, window: torch.Tensor, data: FoldData,
               cfg: Config, device: torch.device, augment: bool = True,
               ranks: Ranks = ALONE) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `window` (indices of up to BS x ACCUM x WORLD_SIZE images): this rank
    takes every world-th index, as micro-batches of BS. Returns this rank's summed loss and number of
    correct predictions, as device tensors (no sync)."""
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    micros = window[ranks.rank::ranks.world].split(cfg.batch_size)  # the same count on every rank
    for i, micro in enumerate(micros):
        micro = micro.to(device, non_blocking=True)
        x = to_input(data.images[micro], cfg.channels_last)
        if augment:
            x = random_affine(x, cfg.rotate, cfg.scale, cfg.shift)
        y = data.labels[micro]
        # DDP all-reduces on every backward; the accumulating ones keep their gradients local
        sync = nullcontext() if ranks.world == 1 or i == len(micros) - 1 else model.no_sync()
        with sync:
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing, reduction="sum")
            # the accumulation scaling: one over the window's real size; DDP then averages over the ranks,
            # which the world factor undoes, so the step is the window's mean gradient on any rank count
            (loss / len(window) * ranks.world).backward()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == y).sum()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, correct


def _evaluate(model: nn.Module, data: FoldData, cfg: Config, device: torch.device) -> tuple[float, float]:
    probs = torch.from_numpy(predict_proba(model, data.images[data.val_idx.to(data.images.device)], cfg, device))
    labels = data.labels[data.val_idx.to(data.labels.device)].cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return loss, (probs.argmax(1) == labels).float().mean().item()


def _rng_state(order: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "order": order.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, order: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    order.set_state(state["order"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_finite(loss: float, which: str, label: str, epoch: int, cfg: Config) -> None:
    """A NaN or infinite loss stops the unit before its resume point or predictions are written."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"{label} epoch {epoch + 1}: the {which} loss became {loss} (training diverged); lower lr "
            f"(now {cfg.scaled_lr:.3g}) or raise the effective batch BS x ACCUM (now {cfg.effective_batch})")


def train_net(cfg: Config, data: FoldData, seed: int, label: str, unit_dir: Path, device: torch.device,
              log: Log = print, ranks: Ranks = ALONE) -> FoldOutput:
    """Train one net on data.train_idx (resuming from unit_dir/resume.pt when it exists) and predict its
    val rows (none in a refit) and the test rows. `seed` fixes its initialisation and batch order;
    `label` ("fold 2 member 1", "refit member 0") names it in logs and errors.

    Writes unit_dir/resume.pt after every epoch (everything needed to continue exactly: model,
    optimizer, scheduler, EMA, RNG states, history) and unit_dir/weights.pt at the end. Windows never
    straddle an epoch, so at an epoch boundary the accumulation position is always zero.

    With ranks.world > 1 every rank calls this with the same arguments: the model is wrapped in
    DistributedDataParallel (which starts every rank from rank 0's weights), all ranks draw the same
    permutation and each trains on its shard of every window; only rank 0 writes.
    """
    from timm.utils import ModelEmaV3

    torch.manual_seed(seed + 7919 * ranks.rank)  # the ranks' augmentation and dropout draws differ
    order = torch.Generator().manual_seed(seed)  # the batch order is the same on every rank
    model = model_from_config(cfg).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = Schedule(len(data.train_idx), cfg)
    optimizer, scheduler = make_optimizer(model, cfg, schedule)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    forward = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(forward) if cfg.compile else forward

    resume_path = unit_dir / "resume.pt"
    start_epoch, step, history = 0, 0, []
    if resume_path.exists():
        state = fileio.read_torch(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"][ranks.rank % len(state["rng"])], order, device)
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log(f"{label}: resuming after epoch {start_epoch}/{cfg.epochs}")

    # every rank gets the same number of micro-batches per window: the epoch is cut to a multiple of the
    # world size (at most world - 1 images an epoch, a different few each time)
    n_train = len(data.train_idx) - len(data.train_idx) % ranks.world
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        model.train()
        perm = data.train_idx[torch.randperm(len(data.train_idx), generator=order)[:n_train]]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(perm.split(schedule.window), desc=f"{label} epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not (cfg.progress and ranks.is_main), unit="step", dynamic_ncols=True)
        for window in bar:
            window_loss, window_correct = train_step(forward, optimizer, window, data, cfg, device, ranks=ranks)
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(model, step=step)
            loss_sum += window_loss
            correct += window_correct
        sum_(loss_sum, ranks)  # the epoch's figures over every rank's shard
        sum_(correct, ranks)
        train_loss = loss_sum.item() / n_train
        _check_finite(train_loss, "training", label, epoch, cfg)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct.item() / n_train}
        line = f"{label} epoch {epoch + 1:>2}/{cfg.epochs}  train loss {train_loss:.4f} acc {record['train_acc']:.2%}"
        if len(data.val_idx):  # a refit has no held-out rows
            val_loss, val_acc = _evaluate(ema.module if ema is not None else model, data, cfg, device)
            _check_finite(val_loss, "validation", label, epoch, cfg)  # the weights the step left behind
            record.update(val_loss=val_loss, val_acc=val_acc)
            line += f"  val loss {val_loss:.4f} acc {val_acc:.2%}"
        record.update(lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        history.append(record)
        rng = gather(_rng_state(order, device), ranks)  # every rank's generators, kept by rank 0
        if ranks.is_main:
            log(f"{line}  lr {record['lr']:.2e}  {record['seconds']:.1f}s")
            fileio.write_torch(resume_path, {
                "epoch": epoch + 1, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                "rng": rng, "history": history})

    final = ema.module if ema is not None else model
    if not ranks.is_main:  # rank 0 predicts and writes; the weights are the same on every rank
        return FoldOutput(np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32), history)
    fileio.write_torch(unit_dir / "weights.pt", final.state_dict())
    val_probs = predict_proba(final, data.images[data.val_idx.to(data.images.device)], cfg, device, cfg.tta)
    test_probs = predict_proba(final, data.test_images, cfg, device, cfg.tta)
    if not (np.isfinite(val_probs).all() and np.isfinite(test_probs).all()):
        _check_finite(float("nan"), "prediction", label, cfg.epochs - 1, cfg)
    return FoldOutput(val_probs, test_probs, history)

