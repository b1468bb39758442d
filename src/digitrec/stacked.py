"""Many nets in one optimizer step: K nets of one architecture and one schedule, trained together on one device.

A GPU trains one small net launch-bound: each step is a few hundred small kernels, and the GPU waits on Python
between them. Stacking K nets makes every kernel K times larger for the same launches.

How. The K nets' parameters are stacked, one tensor per parameter with the nets along a new first dimension, in a
copy of one net's module (`stacked`): the optimizer steps it and the EMA follows it as they would one net, and since
AdamW, SGD and the EMA are element-wise, each net's slice moves exactly as it would alone. The forward pass is
torch.func.vmap over torch.func.functional_call of the architecture (`template`, on the meta device), with
randomness="different", so each net draws its own dropout; vmap runs a convolution over stacked weights as one
grouped convolution. Augmentation is drawn per image for the whole group in one call.

Each net keeps what it has alone: its own rows and batch order (its own generator, seeded as train_net seeds it),
its own initialisation (built after torch.manual_seed(its seed), as alone), its own AdamW moments, EMA and resume
point, and its own files (fold<k>/m<j>/...). Its resume.pt has train_net's format, so a net started stacked may go
on alone and the other way round. What the group shares: the LR schedule (the same step count, since grouped nets
have the same schedule), the global RNG its draws come from, and in fp16 one GradScaler, so an overflow in any
net's gradients skips the step of every net of the group.

Windows of unequal length (the last window of an epoch, folds a row apart) are exact: in each micro-batch every net
takes its own rows, and a net with fewer is padded with rows of weight 0. A padded row changes no other row's
output because every layer of a stackable net works per image (GroupNorm normalises each image by itself; nets
with BatchNorm or a timm model's own layers are never stacked), so the padded gradients are the net's own.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from . import engine, fileio, hardware
from .augment import random_affine
from .config import NOT_TRAINING, Config

log = logging.getLogger(__name__)

# timm optimizers whose update is element-wise, so that K stacked nets step exactly as K separate ones (a
# LAMB- or LARS-style trust ratio takes a norm over the whole tensor, which would mix the nets)
ELEMENTWISE_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "nesterov", "rmsprop")
# nets_per_step=auto on a GPU: at most this many nets per step. Not yet measured against 5 or 16; 8 x BS 128 is
# 1024 images a micro-batch, and the layouts of configs/best.yaml keep at most 0.83 MB of activations an image
# for the backward pass (gn_m7 width 48; 1.3 MB for gn_m3 width 32), so a group fits a 16 GB T4 many times over
AUTO_ON_CUDA = 8


def why_not_stacked(cfg: Config) -> str | None:
    """Why nets of this config train one per step (None: they may be stacked)."""
    if cfg.model.startswith("timm:"):
        return "timm models may normalise over the batch"
    if cfg.norm == "batch":
        return "BatchNorm mixes the images of a batch"
    if cfg.optimizer.lower() not in ELEMENTWISE_OPTIMIZERS:
        return f"optimizer {cfg.optimizer} is not element-wise (stackable: {', '.join(ELEMENTWISE_OPTIMIZERS)})"
    if cfg.compile:
        return "compile=true compiles one net"
    return None


def resolve(cfg: Config, device: torch.device) -> int:
    """nets_per_step as a number: auto stacks on CUDA (up to AUTO_ON_CUDA) and not on the CPU, where five gn_cnn
    stacked trained 0.62x the images/s of one alone, in bf16 (docs/performance.md); a number is the most nets
    per step (a budgeted run decides by timing both, budget.py). Data-parallel ranks (parallel=data, WORLD_SIZE > 1) each hold a shard of one net: one per step."""
    wanted = cfg.nets_per_step if cfg.nets_per_step != "auto" else (AUTO_ON_CUDA if device.type == "cuda" else 1)
    if wanted > 1 and cfg.world_size > 1:
        log.info(f"nets_per_step={cfg.nets_per_step}: data-parallel ranks train one net per step")
        return 1
    return wanted


@dataclass
class Job:
    """One net to train: its settings, seed, name in logs and folder (engine.train_net's arguments), what it trains
    on as group_key needs it, and its data, built only when it trains: a pseudo-labelled student's is the size of
    the training set, so memory grows with the nets of a group, not with the students of a round."""

    cfg: Config
    seed: int
    label: str
    unit_dir: Path
    rows: int  # training rows an epoch
    soft_labels: bool  # target distributions (a student's soft targets), not class indices
    make_data: Callable[[], engine.FoldData]


def group_key(job: Job) -> str | None:
    """Nets with the same key may share a step: the same settings but seed and tta (a prediction setting), the
    same steps per epoch (so the same LR at every step), the same kind of labels (classes or target
    distributions), and the same finished epochs (resume points written together). None: never stacked."""
    if why_not_stacked(job.cfg) is not None:
        return None
    settings = {k: v for k, v in job.cfg.to_dict().items() if k not in ("seed", "fold_seed", "tta", *NOT_TRAINING)}
    steps = engine.Schedule(job.rows, job.cfg).steps_per_epoch
    return json.dumps([settings, steps, job.soft_labels, engine.resume_epoch(job.unit_dir)], sort_keys=True)


def groups(jobs: list[Job], nets_per_step: int) -> list[list[int]]:
    """The jobs (by index) in groups that train together: alike by group_key, at most nets_per_step each, in
    the order their first job comes."""
    if nets_per_step == 1:
        return [[i] for i in range(len(jobs))]
    by_key: dict[str, list[int]] = {}
    out: list[list[int]] = []
    for i, job in enumerate(jobs):
        key = group_key(job)
        if key is None:
            out.append([i])
            continue
        if key not in by_key or len(by_key[key]) == nets_per_step:
            by_key[key] = []
            out.append(by_key[key])
        by_key[key].append(i)
    return out


# ---------------------------------------------------------------- one net's slice of the group's state


def _net_slice(state: dict, k: int) -> dict:
    """Net k's copy of a stacked state_dict (its own storage: a view would save all K nets' numbers)."""
    return {name: tensor[k].clone() for name, tensor in state.items()}


def _stack(states: list[dict]) -> dict:
    return {name: torch.stack([state[name] for state in states]) for name in states[0]}


def _optimizer_slice(state: dict, k: int) -> dict:
    """Net k's optimizer state_dict, as a single net's optimizer has it: the same param groups, its slice of
    every moment, and the shared step count."""
    per_param = {i: {key: value if key == "step" else value[k].clone() for key, value in moments.items()}
                 for i, moments in state["state"].items()}
    return {"state": per_param, "param_groups": state["param_groups"]}


def _optimizer_stack(states: list[dict]) -> dict:
    first = states[0]
    per_param = {i: {key: value if key == "step" else torch.stack([s["state"][i][key] for s in states])
                     for key, value in moments.items()} for i, moments in first["state"].items()}
    return {"state": per_param, "param_groups": first["param_groups"]}


# ---------------------------------------------------------------- the precision of a stacked step

# the ops autocast computes in bf16 or fp16 (its lower-precision list): the convolutions and matmuls
LOWER_PRECISION_OPS = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, F.linear, torch.matmul, torch.mm,
                                 torch.bmm, torch.addmm, torch.baddbmm})


class LowerPrecision(TorchFunctionMode):
    """Autocast's rule for its lower-precision ops, applied at the Python call: their floating-point tensors are
    cast to bf16 or fp16 (the rest of the net keeps the dtypes that follow). Under torch.func.vmap a convolution
    reaches the dispatcher as aten::convolution, which the CPU's autocast does not list (it lists conv2d), so a
    stacked step would compute its convolutions in fp32 while the run records bf16; with this mode they run in
    the recorded precision on every device (tests/test_precision.py checks the dtypes the ops ran in). Casts
    are differentiable: the gradients reach the fp32 parameters in fp32, as under autocast."""

    def __init__(self, precision_name: str):
        super().__init__()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_name)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype is not None and func in LOWER_PRECISION_OPS:
            args = tuple(self._cast(a) for a in args)
            kwargs = {key: self._cast(value) for key, value in kwargs.items()}
        return func(*args, **kwargs)

    def _cast(self, value):
        return value.to(self.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


# ---------------------------------------------------------------- the group's trainer


class StackedTrainer:
    """K nets of one config stepped together: what train_group runs and the bench times."""

    def __init__(self, cfg: Config, seeds: list[int], device: torch.device, n_train: int):
        from timm.optim import param_groups_weight_decay
        from timm.utils import ModelEmaV3

        self.cfg, self.device, self.k = cfg, device, len(seeds)
        self.schedule = engine.Schedule(n_train, cfg)
        nets = []
        for seed in seeds:
            torch.manual_seed(seed)  # each net starts as it would alone: train_net seeds, then builds
            nets.append(engine.build_net(cfg, device))
        one = nets[0]
        assert not list(one.buffers()), "a stackable net keeps no buffers (why_not_stacked)"
        self.template = copy.deepcopy(one).to("meta")  # the architecture that vmap calls with each net's weights
        self.stacked = copy.deepcopy(one)
        for name, _ in one.named_parameters():
            owner, _, leaf = name.rpartition(".")
            setattr(self.stacked.get_submodule(owner), leaf,
                    nn.Parameter(torch.stack([net.get_parameter(name).detach() for net in nets])))
        self.view = one  # a real net that one net's weights are loaded into, to validate and predict with
        # timm's parameter groups of one net (no weight decay on biases and norm weights), over the stacked tensors
        stacked_of = {id(p): self.stacked.get_parameter(name) for name, p in one.named_parameters()}
        param_groups = [{**group, "params": [stacked_of[id(p)] for p in group["params"]]}
                        for group in param_groups_weight_decay(one, cfg.weight_decay)]
        self.optimizer, self.scheduler = engine.make_optimizer(param_groups, cfg, self.schedule)
        self.ema = ModelEmaV3(self.stacked, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
        self.compute = hardware.precision(device, cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type) if self.compute == "fp16" else None
        self.step = 0

    def train(self) -> None:
        self.template.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, 1, 28, 28) images, net k's in x[k] -> (K, B, 10) logits, computed in the run's precision as one
        net's are (LowerPrecision)."""
        with hardware.autocast(self.device, self.compute), LowerPrecision(self.compute):
            return torch.func.vmap(self._one_net, randomness="different")(dict(self.stacked.named_parameters()), x)

    def _one_net(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.template, params, (x,))

    def accumulate(self, windows: list[torch.Tensor], datas: list[engine.FoldData],
                   augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Every net's gradient over its own window (net k: windows[k], indices into datas[k]), summed into the
        stacked parameters' .grad; engine.train_step's maths per net. Returns each net's summed loss and number
        of correct predictions, (K,) device tensors."""
        cfg, device, k = self.cfg, self.device, self.k
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.long)
        # the accumulation scaling, per net: one over its window's real size
        inverse = torch.tensor([1.0 / len(window) for window in windows])
        micros = [window.split(cfg.batch_size) for window in windows]
        for i in range(max(len(m) for m in micros)):
            parts = [m[i] if i < len(m) else m[0][:0] for m in micros]  # a net whose window ran out takes no rows
            sizes = torch.tensor([len(part) for part in parts])
            idx = torch.zeros(k, int(sizes.max()), dtype=torch.long)  # padded with row 0, weighted 0
            for net, part in enumerate(parts):
                idx[net, :len(part)] = part
            real = torch.arange(idx.shape[1]) < sizes[:, None]
            weight = (real * inverse[:, None]).to(device, non_blocking=True)
            real, idx = real.to(device, non_blocking=True), idx.to(device, non_blocking=True)
            images, y = _rows(datas, idx)
            x = engine.to_input(images.flatten(0, 1), cfg.channels_last)
            if augment:
                x = random_affine(x, cfg.rotate, cfg.scale, cfg.shift, cfg.elastic)
            logits = self.forward(x.unflatten(0, idx.shape))
            per_row = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(0, 1), reduction="none",
                                      label_smoothing=cfg.label_smoothing).view(idx.shape)
            loss = (per_row * weight).sum()
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += (per_row.detach() * real).sum(1)
            hits = logits.argmax(-1).flatten() == engine.hard_labels(y.flatten(0, 1))
            correct += (hits.view(idx.shape) & real).sum(1)
        return loss_sum, correct

    def update(self, windows: list[torch.Tensor], datas: list[engine.FoldData]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step of every net over its own window, the LR schedule's step and the EMA's update
        (engine.Trainer.update for K nets)."""
        out = self.accumulate(windows, datas)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        if self.ema is not None:
            self.ema.update(self.stacked, step=self.step)
        return out

    def net(self, k: int) -> nn.Module:
        """Net k's final weights (the EMA's when there is one) in a real net, to validate, save and predict."""
        source = self.ema.module if self.ema is not None else self.stacked
        self.view.load_state_dict(_net_slice(source.state_dict(), k))
        return self.view

    def net_state(self, k: int) -> dict:
        """Net k's resume state, as engine.Trainer.state_dict gives a single net's."""
        return {"step": self.step, "model": _net_slice(self.stacked.state_dict(), k),
                "optimizer": _optimizer_slice(self.optimizer.state_dict(), k), "scheduler": self.scheduler.state_dict(),
                "ema": _net_slice(self.ema.state_dict(), k) if self.ema is not None else {},
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_net_states(self, states: list[dict]) -> None:
        """The K nets' resume states (net_state's, or train_net's), which have taken the same steps."""
        self.step = states[0]["step"]
        self.stacked.load_state_dict(_stack([state["model"] for state in states]))
        self.optimizer.load_state_dict(_optimizer_stack([state["optimizer"] for state in states]))
        self.scheduler.load_state_dict(states[0]["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(_stack([state["ema"] for state in states]))
        if self.scaler is not None and states[0].get("scaler"):
            self.scaler.load_state_dict(states[0]["scaler"])


def _rows(datas: list[engine.FoldData], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels at idx (K, B): net k's from datas[k]. Fold nets share the run's tensors (one
    gather); pseudo-labelled students each have their own."""
    first = datas[0]
    if all(d.images is first.images and d.labels is first.labels for d in datas):
        return first.images[idx], first.labels[idx]
    return (torch.stack([d.images[i] for d, i in zip(datas, idx)]),
            torch.stack([d.labels[i] for d, i in zip(datas, idx)]))


def train_group(jobs: list[Job], device: torch.device) -> list[engine.FoldOutput]:
    """Train the jobs' nets together (alike by group_key), each resuming from and writing its own files as
    engine.train_net does; each epoch's seconds in a net's history are its share of the group's."""
    cfg, k = jobs[0].cfg, len(jobs)
    datas = [job.make_data() for job in jobs]
    trainer = StackedTrainer(cfg, [job.seed for job in jobs], device, len(datas[0].train_idx))
    orders = [torch.Generator().manual_seed(job.seed) for job in jobs]  # each net's batch order, as alone
    start_epoch, histories = 0, [[] for _ in jobs]
    log.info(f"{k} nets in one step: {', '.join(job.label for job in jobs)}")
    if (jobs[0].unit_dir / "resume.pt").exists():  # then every net's is there, after the same epoch (group_key)
        states = [fileio.read_torch(job.unit_dir / "resume.pt") for job in jobs]
        trainer.load_net_states(states)
        for state, order in zip(states, orders):  # the global generator is the group's: the same in every file
            engine.set_rng_state(state["rng"][0], order, device)
        start_epoch, histories = states[0]["epoch"], [state["history"] for state in states]
        log.info(f"{k} nets: resuming after epoch {start_epoch}/{cfg.epochs}")

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        trainer.train()
        windows = [engine.epoch_windows(data.train_idx, order, trainer.schedule.window) for data, order in zip(datas, orders)]
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.long)
        bar = tqdm(zip(*windows), total=len(windows[0]), desc=f"{k} nets epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress, unit="step", dynamic_ncols=True)
        for step_windows in bar:
            window_loss, window_correct = trainer.update(list(step_windows), datas)
            loss_sum += window_loss
            correct += window_correct
        lr = trainer.optimizer.param_groups[0]["lr"]
        lines = []
        for net, job in enumerate(jobs):
            record, line = engine.epoch_record(trainer.net(net), datas[net], job.cfg, device, job.label, epoch,
                                               loss_sum[net].item(), int(correct[net]), sum(map(len, windows[net])), lr)
            histories[net].append(record)
            lines.append(line)
        seconds = (time.perf_counter() - started) / k
        for net, job in enumerate(jobs):
            engine.sitting_record(histories[net][-1], seconds, k, resumed=epoch == start_epoch > 0)
            log.info(f"{lines[net]}  {seconds:.1f}s ({k} nets in {k * seconds:.1f}s)")
            fileio.write_torch(job.unit_dir / "resume.pt", {
                "epoch": epoch + 1, **trainer.net_state(net), "rng": [engine.rng_state(orders[net], device)],
                "history": histories[net]})
    return [engine.finish_net(trainer.net(net), datas[net], job.cfg, device, job.unit_dir, job.label, histories[net])
            for net, job in enumerate(jobs)]
