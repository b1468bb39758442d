"""Training and prediction for one net (a fold's member, or a refit member): the single-net training loop, what
the CPU runs and what the bench compares against. stacked.py trains several nets of one architecture per step
on a GPU, with the pieces defined here (windows, optimizer, schedule, evaluation, resume points); the device
and the precision a net computes in are hardware.py's.

The whole training set lives on the device as one uint8 tensor; a batch is an index tensor into it,
turned to float and augmented on the device in one call. The optimizer steps once per window of
`accum` micro-batches, and each micro-batch's summed loss is divided by the number of images in its
window, so one step equals one step on the whole window as a single batch - also for the short
window at the end of an epoch.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from .hardware import autocast, precision, select_device
from .models import load_weights, model_from_config

log = logging.getLogger(__name__)


def to_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float (B, 1, 28, 28) in [0, 1], in the layout the model runs fastest in."""
    x = images.unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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
        with autocast(device, precision(device, cfg.amp)):
            probs = sum(F.softmax(model(v).float(), dim=1) for v in views) / len(views)
        out.append(probs.cpu())
    return torch.cat(out).numpy().astype(np.float32)


def build_net(cfg: Config, device: torch.device) -> nn.Module:
    """cfg's model on the device, in the memory layout it trains and predicts in: every net of the
    project (trained, loaded, timed or costed) is built here."""
    model = model_from_config(cfg).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def load_net(unit_dir: Path, cfg: Config, device: torch.device) -> nn.Module:
    """A finished net: unit_dir/weights.pt in the net build_net makes for its config."""
    return load_weights(build_net(cfg, device), unit_dir / "weights.pt")


@dataclass
class FoldData:
    """Tensors already on the device: all training images and labels, this fold's index split, test."""

    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64, or (N, 10) float target distributions (a student's soft targets)
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


def make_optimizer(params: nn.Module | list[dict], cfg: Config, schedule: Schedule):
    """cfg's timm optimizer over a net (timm groups its parameters: no weight decay on biases and norm
    weights) or over parameter groups already made (stacked.py's), and its LR schedule."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    lr = cfg.scaled_lr
    try:
        optimizer = create_optimizer_v2(params, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay)
    except ValueError as e:  # timm: "Optimizer x not found in registry"
        import difflib

        from timm.optim import list_optimizers

        near = difflib.get_close_matches(cfg.optimizer.lower(), list_optimizers(), n=3)
        hint = f" (did you mean {' or '.join(near)}?)" if near else " (see timm.optim.list_optimizers())"
        raise UserError(f"optimizer '{cfg.optimizer}' is not a timm optimizer{hint}: {e}") from None
    # counted in optimizer steps (timm's "epochs" of one update each), so the curve is the same whatever
    # BS x ACCUM is, and the warm-up is Schedule's whole number of steps (a fractional warmup_epochs rounded,
    # at most half the run) rather than timm's warmup_epochs x steps per epoch
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=max(1, schedule.total_steps - schedule.warmup_steps),
        min_lr=lr * cfg.min_lr_ratio, warmup_lr=lr * 0.01, warmup_epochs=schedule.warmup_steps,
        warmup_prefix=True, step_on_epochs=False, updates_per_epoch=1)
    return optimizer, scheduler


@dataclass
class Trainer:
    """Everything one net trains with, as make_trainer builds it for train_net, preflight and the bench."""

    cfg: Config
    device: torch.device
    ranks: Ranks
    schedule: Schedule
    model: nn.Module  # the weights: what the EMA follows and resume.pt keeps
    forward: nn.Module  # what the step calls: the model, wrapped in DDP (WORLD_SIZE > 1) and compiled (compile)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler
    ema: Any  # timm's ModelEmaV3, or None (ema: false)
    scaler: Any  # torch.amp.GradScaler for fp16, else None: fp16's small gradients would underflow unscaled
    step: int = 0  # optimizer steps taken

    @property
    def final(self) -> nn.Module:
        """The weights that validate and predict: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def start_epoch(self, train_idx: torch.Tensor, order: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Training mode, and the epoch's windows (epoch_windows)."""
        self.model.train()
        return epoch_windows(train_idx, order, self.schedule.window, self.ranks.world)

    def update(self, window: torch.Tensor, data: FoldData) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over `window`, the LR schedule's step and the EMA's update: the body of
        train_net's loop, and what the bench times. Returns train_step's (loss sum, correct)."""
        out = train_step(self.forward, self.optimizer, window, data, self.cfg, self.device, ranks=self.ranks,
                         scaler=self.scaler)
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else {},
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):  # the loss scale it had grown or cut to
            self.scaler.load_state_dict(state["scaler"])


def epoch_windows(train_idx: torch.Tensor, order: torch.Generator, window: int, world: int = 1) -> tuple[torch.Tensor, ...]:
    """An epoch's windows: a permutation of train_idx drawn from `order` (the same on every rank), in windows
    of `window` (BS x ACCUM x WORLD_SIZE) indices. Every rank gets the same number of micro-batches per window:
    the epoch is cut to a multiple of the world size (at most world - 1 images an epoch, a different few each
    time)."""
    n = len(train_idx) - len(train_idx) % world
    return train_idx[torch.randperm(len(train_idx), generator=order)[:n]].split(window)


def make_trainer(cfg: Config, device: torch.device, n_train: int, ranks: Ranks = ALONE) -> Trainer:
    """The net (build_net), its timm optimizer and LR schedule for epochs of n_train rows, its EMA, and
    the module the step calls: wrapped in DistributedDataParallel when ranks.world > 1 (which starts
    every rank from rank 0's weights) and compiled with compile=true."""
    from timm.utils import ModelEmaV3

    model = build_net(cfg, device)
    schedule = Schedule(n_train, cfg)
    optimizer, scheduler = make_optimizer(model, cfg, schedule)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    scaler = torch.amp.GradScaler(device.type) if precision(device, cfg.amp) == "fp16" else None
    forward = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(forward) if cfg.compile else forward
    return Trainer(cfg, device, ranks, schedule, model, forward, optimizer, scheduler, ema, scaler)


def preflight(cfg: Config, device_name: str | None = None) -> torch.device:
    """The device (cfg.device, or this rank's own), and a net's whole training set-up built once, before
    a run writes anything: a setting only torch or timm can check (device=cuda without CUDA,
    timm:<name>, optimizer) fails here."""
    device = select_device(device_name or cfg.device)
    make_trainer(cfg, device, cfg.effective_batch)
    return device


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, window: torch.Tensor, data: FoldData,
               cfg: Config, device: torch.device, augment: bool = True, ranks: Ranks = ALONE,
               scaler: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over `window` (indices of up to BS x ACCUM x WORLD_SIZE images): this rank
    takes every world-th index, as micro-batches of BS. Returns this rank's summed loss and number of
    correct predictions, as device tensors (no sync). With a GradScaler (fp16) every backward is of the
    scaled loss, and the step unscales the window's summed gradients first (or skips an overflowed one)."""
    compute = precision(device, cfg.amp)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    micros = window[ranks.rank::ranks.world].split(cfg.batch_size)  # the same count on every rank
    for i, micro in enumerate(micros):
        micro = micro.to(device, non_blocking=True)
        x = to_input(data.images[micro], cfg.channels_last)
        if augment:
            x = random_affine(x, cfg.rotate, cfg.scale, cfg.shift, cfg.elastic)
        y = data.labels[micro]  # class indices, or (B, 10) probabilities: F.cross_entropy takes either
        # DDP all-reduces on every backward; the accumulating ones keep their gradients local
        sync = nullcontext() if ranks.world == 1 or i == len(micros) - 1 else model.no_sync()
        with sync:
            with autocast(device, compute):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing, reduction="sum")
            # the accumulation scaling: one over the window's real size; DDP then averages over the ranks,
            # which the world factor undoes, so the step is the window's mean gradient on any rank count
            window_loss = loss / len(window) * ranks.world
            (scaler.scale(window_loss) if scaler is not None else window_loss).backward()
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == hard_labels(y)).sum()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, correct


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices from class indices or from target distributions (a one-hot row gives its class)."""
    return y if y.ndim == 1 else y.argmax(1)


def evaluate(model: nn.Module, data: FoldData, cfg: Config, device: torch.device) -> tuple[float, float]:
    probs = torch.from_numpy(predict_proba(model, data.images[data.val_idx.to(data.images.device)], cfg, device))
    labels = hard_labels(data.labels[data.val_idx.to(data.labels.device)]).cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return loss, (probs.argmax(1) == labels).float().mean().item()


def rng_state(order: torch.Generator, device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "order": order.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, order: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    order.set_state(state["order"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_finite(loss: float, which: str, label: str, epoch: int, cfg: Config) -> None:
    """A NaN or infinite loss stops the unit before its resume point or predictions are written."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"{label} epoch {epoch + 1}: the {which} loss became {loss} (training diverged); lower lr "
            f"(now {cfg.scaled_lr:.3g}) or raise the effective batch BS x ACCUM (now {cfg.effective_batch})")


def resume_epoch(unit_dir: Path) -> int:
    """The epochs a net has finished by its resume point (0 without one)."""
    path = unit_dir / "resume.pt"
    return fileio.read_torch(path)["epoch"] if path.is_file() else 0


def predict_net(model: nn.Module, data: FoldData, cfg: Config, device: torch.device, unit_dir: Path,
                label: str) -> tuple[np.ndarray, np.ndarray]:
    """A finished net's probabilities (TTA as cfg.tta says) for its held-out rows (none in a refit) and the
    test rows, written to unit_dir/val_probs.npy and test_probs.npy: after training, and by `make predict`."""
    val_probs = predict_proba(model, data.images[data.val_idx.to(data.images.device)], cfg, device, cfg.tta)
    test_probs = predict_proba(model, data.test_images, cfg, device, cfg.tta)
    if not (np.isfinite(val_probs).all() and np.isfinite(test_probs).all()):
        check_finite(float("nan"), "prediction", label, cfg.epochs - 1, cfg)
    fileio.write_npy(unit_dir / "val_probs.npy", val_probs)
    fileio.write_npy(unit_dir / "test_probs.npy", test_probs)
    return val_probs, test_probs


def train_net(cfg: Config, data: FoldData, seed: int, label: str, unit_dir: Path, device: torch.device,
              ranks: Ranks = ALONE) -> FoldOutput:
    """Train one net on data.train_idx (resuming from unit_dir/resume.pt when it exists) and predict its
    val rows (none in a refit) and the test rows. `seed` fixes its initialisation and batch order;
    `label` ("fold 2 member 1", "refit member 0") names it in logs and errors.

    Writes unit_dir/resume.pt after every epoch (everything needed to continue exactly: model,
    optimizer, scheduler, EMA, RNG states, history), then unit_dir/weights.pt and the predictions
    (predict_net). Windows never straddle an epoch, so at an epoch boundary the accumulation position
    is always zero.

    With ranks.world > 1 every rank calls this with the same arguments: each trains on its shard of every
    window (make_trainer wraps the model in DDP); all ranks draw the same permutation; only rank 0 writes.
    """
    torch.manual_seed(seed + 7919 * ranks.rank)  # the ranks' augmentation and dropout draws differ
    order = torch.Generator().manual_seed(seed)  # the batch order is the same on every rank
    trainer = make_trainer(cfg, device, len(data.train_idx), ranks)

    resume_path = unit_dir / "resume.pt"
    start_epoch, history = 0, []
    if resume_path.exists():
        state = fileio.read_torch(resume_path)
        trainer.load_state_dict(state)
        set_rng_state(state["rng"][ranks.rank % len(state["rng"])], order, device)
        start_epoch, history = state["epoch"], state["history"]
        log.info(f"{label}: resuming after epoch {start_epoch}/{cfg.epochs}")

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        windows = trainer.start_epoch(data.train_idx, order)
        n_train = sum(len(window) for window in windows)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(windows, desc=f"{label} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and ranks.is_main), unit="step", dynamic_ncols=True)
        for window in bar:
            window_loss, window_correct = trainer.update(window, data)
            loss_sum += window_loss
            correct += window_correct
        sum_(loss_sum, ranks)  # the epoch's figures over every rank's shard
        sum_(correct, ranks)
        record, line = epoch_record(trainer.final, data, cfg, device, label, epoch, loss_sum.item(), correct.item(),
                                    n_train, trainer.optimizer.param_groups[0]["lr"])
        history.append(sitting_record(record, time.perf_counter() - started, 1, resumed=epoch == start_epoch > 0))
        rng = gather(rng_state(order, device), ranks)  # every rank's generators, kept by rank 0
        if ranks.is_main:
            log.info(f"{line}  {record['seconds']:.1f}s")
            fileio.write_torch(resume_path, {"epoch": epoch + 1, **trainer.state_dict(), "rng": rng,
                                             "history": history})

    if not ranks.is_main:  # rank 0 predicts and writes; the weights are the same on every rank
        return FoldOutput(np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32), history)
    return finish_net(trainer.final, data, cfg, device, unit_dir, label, history)


def epoch_record(final: nn.Module, data: FoldData, cfg: Config, device: torch.device, label: str, epoch: int,
                 loss_sum: float, correct: int, n_train: int, lr: float) -> tuple[dict, str]:
    """One net's epoch as its history keeps it, and as its log line says it: the training loss and accuracy
    over the epoch's n_train rows, the validation figures of `final`, the weights the step left behind (none
    for a refit, which holds no row out), and the LR; the caller adds the epoch's seconds to both, validation
    included. A NaN or infinite loss stops the net here."""
    train_loss = loss_sum / n_train
    check_finite(train_loss, "training", label, epoch, cfg)
    record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct / n_train}
    line = f"{label} epoch {epoch + 1:>2}/{cfg.epochs}  train loss {train_loss:.4f} acc {record['train_acc']:.2%}"
    if len(data.val_idx):
        val_loss, val_acc = evaluate(final, data, cfg, device)
        check_finite(val_loss, "validation", label, epoch, cfg)
        record.update(val_loss=val_loss, val_acc=val_acc)
        line += f"  val loss {val_loss:.4f} acc {val_acc:.2%}"
    record["lr"] = lr
    return record, f"{line}  lr {lr:.2e}"


def sitting_record(record: dict, seconds: float, nets_per_step: int, resumed: bool) -> dict:
    """An epoch's record with how it was trained, for the net's done.json: its seconds (a stacked net's share of its
    group's), the nets in its step, and whether it began a sitting that went on from a resume point."""
    record.update(seconds=seconds, nets_per_step=nets_per_step)
    if resumed:
        record["resumed"] = True
    return record


def finish_net(final: nn.Module, data: FoldData, cfg: Config, device: torch.device, unit_dir: Path, label: str,
               history: list[dict]) -> FoldOutput:
    """A trained net's weights (unit_dir/weights.pt: `final`, the EMA's when there is one) and predictions."""
    fileio.write_torch(unit_dir / "weights.pt", final.state_dict())
    return FoldOutput(*predict_net(final, data, cfg, device, unit_dir, label), history)
