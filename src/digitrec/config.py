"""One typed configuration: loaded from configs/*.yaml, overridden by key=value, validated once here.

Every run saves the resolved config (config.yaml) beside its results, so a run can be reproduced and
`make predict` can rebuild its models.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from . import settings
from .errors import UserError
from .settings import ALIASES

@dataclass
class Config:
    # --- run
    name: str = "default"
    seed: int = 42
    data: str | None = None  # folder with the CSVs or a digit-recognizer.zip; None = search (data.py)
    limit: int | None = None  # train on a stratified subset of this many rows (test is still predicted in full)
    folds: int = 5
    fold: int | None = None  # train this fold only
    fold_seed: int | None = None  # the seed of the stratified folds; None = seed. A member's own: bagged folds
    # BUDGET=30m (90s, 2h, 1h30m): the whole `make train` in this much time; planner.py sets members, epochs,
    # tta, refit and nets_per_step from step rates it measures here, and config.yaml records its plan
    budget: str | None = None
    # --- model (models.py registry)
    model: str = "gn_cnn"
    width: int = 32  # channels of the first stage; later stages double it
    groups: int = 8  # GroupNorm groups
    # group | group_ws (weight-standardised convs before the GroupNorm, Qiao et al. 2019) | batch: BatchNorm
    # only to compare (make sweep STUDY=norm); it breaks BS x ACCUM == one batch
    norm: str = "group"
    dropout: float = 0.4
    # --- optimisation
    epochs: int = 18
    batch_size: int = 128  # the micro-batch: what goes through the model at once
    accum: int = 1  # micro-batches per optimizer step; the effective batch is batch_size * accum
    optimizer: str = "adamw"  # any timm optimizer name
    lr: float = 3e-3  # the LR at the reference batch lr_ref_batch
    lr_ref_batch: int = 128
    lr_scaling: str = "sqrt"  # how lr follows the effective batch: sqrt | linear | none
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    label_smoothing: float = 0.1
    ema: bool = True
    ema_decay: float = 0.999
    # --- augmentation (augment.py), drawn per image, applied to the whole batch at once
    rotate: float = 10.0  # degrees, +-
    scale: float = 0.1  # fraction, +-
    shift: float = 0.1  # fraction of the image side, +-
    elastic: float = 0.0  # elastic distortion: largest control-point displacement in pixels (0: off)
    tta: bool = True  # average predictions over nine views: the image, 1-pixel shifts, +-5 deg, +-5% zoom
    # --- ensemble (pipeline.py): members trained per fold and in the refit, their probabilities averaged
    members: list | None = None  # each a mapping of MEMBER_KEYS overriding the settings above; None = one
    refit: bool = False  # after CV, train every member again on all rows; those nets make the submission
    # --- pseudo-labels (pseudo.py): students trained on their fold's rows plus test rows labelled by teachers
    pseudo_rounds: int = 0  # rounds of students after the CV (0: off); round r's teachers are round r - 1's nets
    pseudo_agree: bool = True  # keep only the test rows on which every teacher net picks the same label
    pseudo_threshold: float = 0.0  # ... and whose averaged teacher probability of that label is at least this
    pseudo_soft: bool = False  # targets: the teachers' averaged probabilities (sharpened by temperature), not labels
    pseudo_temperature: float = 1.0  # soft targets are softmax(log p / T): T < 1 sharpens
    pseudo_epochs: int | None = None  # a student's epochs (None: its member's); its epochs hold ~1.8x the rows
    # --- processes (distributed.py; started with torchrun / make train NPROC=2)
    parallel: str = "data"  # data: all ranks train each net (DDP) | folds: ranks take whole nets
    world_size: int = 1  # data-parallel processes; set from torchrun's WORLD_SIZE, recorded with the run
    timeout_minutes: float = 10.0  # a collective that waits longer on a lost peer fails instead of hanging
    # --- hardware
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # mixed precision: true follows the hardware (hardware.precision: bf16 where native, fp16 + GradScaler on GPUs
    # without bf16 such as the T4, fp32 on other CPUs); false is fp32; bf16 or fp16 asks for that one
    amp: bool | str = True
    precision: str | None = None  # set by the run: the precision it computed in (bf16, fp16 or fp32), recorded
    channels_last: bool = False  # NHWC: measured slower for this small CNN on both the CPU and an H100
    compile: bool = False  # torch.compile the model
    # nets trained together in one step (stacked.py): auto stacks on CUDA, not on the CPU; N: at most N; 1: one net
    # per step. A run records the number it used
    nets_per_step: int | str = "auto"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    flush_denormal: bool = True  # CPU: denormal floats become zero (x86 computes them in microcode, far slower)
    eval_batch_size: int = 256  # measured faster than 1024 here, and a quarter of the activations
    progress: bool = True  # tqdm bars
    # --- where things go
    runs_dir: str = "runs"
    submissions_dir: str = "submissions"

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step: the micro-batch, times the micro-batches accumulated, times the
        data-parallel processes that each take a shard of the window."""
        return self.batch_size * self.accum * self.world_size

    @property
    def split_seed(self) -> int:
        """The seed of the stratified folds: fold_seed, else the run's seed."""
        return self.seed if self.fold_seed is None else self.fold_seed

    @property
    def scaled_lr(self) -> float:
        """The LR rule for a changed effective batch: lr is given at lr_ref_batch and follows
        (effective / ref) ** 1/2 (sqrt, the default: right for Adam-type optimizers), ** 1 (linear,
        Goyal et al. for SGD) or not at all."""
        ratio = self.effective_batch / self.lr_ref_batch
        power = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}[self.lr_scaling]
        return self.lr * ratio**power

    @property
    def budget_s(self) -> float | None:
        """BUDGET in seconds (None: no budget)."""
        return None if self.budget is None else budget_seconds(self.budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?")


def budget_seconds(text: str) -> float:
    """BUDGET=90s, 30m, 2h, 1h30m (or 1.5h) in seconds; one line naming the setting otherwise."""
    match = _DURATION.fullmatch(str(text).strip().lower().replace(" ", ""))
    seconds = sum(float(part or 0) * unit for part, unit in zip(match.groups(), (3600, 60, 1))) if match else 0.0
    if seconds <= 0:
        raise UserError(f"BUDGET (budget) must be a time such as 90s, 30m, 2h or 1h30m, got '{text}'")
    return seconds


KEYS = [f.name for f in fields(Config)]
_TYPES = typing.get_type_hints(Config)
# what may differ between the members of an ensemble: the net and how it is trained, not the data or folds
MEMBER_KEYS = ("model", "width", "groups", "norm", "dropout", "epochs", "batch_size", "accum", "optimizer", "lr",
               "lr_ref_batch", "lr_scaling", "weight_decay", "warmup_epochs", "min_lr_ratio", "label_smoothing",
               "ema", "ema_decay", "rotate", "scale", "shift", "elastic", "tta", "seed", "fold_seed")


def _resolve_key(raw: str) -> str:
    key = settings.normalize(raw)
    key = ALIASES.get(key, key)
    if key not in KEYS:
        near = difflib.get_close_matches(key, KEYS + list(ALIASES), n=1)
        hint = f" (did you mean '{ALIASES.get(near[0], near[0])}'?)" if near else ""
        raise UserError(f"unknown setting '{raw}'{hint}")
    return key


def _members(value: Any, source: str) -> list[dict[str, Any]] | None:
    """members: a list of mappings of MEMBER_KEYS (YAML text from the command line is parsed first)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"setting 'members' in {source}: cannot read the value {value!r}") from None
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise UserError(f"setting 'members' in {source} must be a list of mappings (e.g. - {{model: gn_m5}})")
    members = []
    for j, overrides in enumerate(value):
        where = f"{source}, member {j}"
        member = {}
        for raw, item in overrides.items():
            key = _resolve_key(str(raw))
            if key not in MEMBER_KEYS:
                raise UserError(f"setting '{key}' in {where} cannot differ between members; "
                                f"members may set {', '.join(MEMBER_KEYS)}")
            member[key] = _coerce(key, item, where)
        members.append(member)
    return members


def _nets_per_step(value: Any, source: str) -> int | str:
    """auto or a whole number >= 1, read alike from a YAML file (1.5, true) and from a command line ("1.5")."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if not isinstance(value, (bool, float)) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"setting 'nets_per_step' in {source} must be auto or a whole number >= 1, got '{value}'")


def _coerce(key: str, value: Any, source: str) -> Any:
    if key == "members":
        return _members(value, source)
    if key == "nets_per_step":
        return _nets_per_step(value, source)
    return settings.coerce(key, value, _TYPES[key], source)


def validate(cfg: Config) -> Config:
    from .models import MODEL_NAMES, NORMALISED, NORMS, is_known_model

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(cfg.batch_size >= 1, f"BS (batch_size) must be >= 1, got {cfg.batch_size}")
    need(cfg.accum >= 1, f"ACCUM (accum) must be >= 1, got {cfg.accum}")
    need(0 <= cfg.seed < 2**32, f"SEED (seed) must be in 0..2**32-1, got {cfg.seed}")
    need(cfg.epochs >= 1, f"EPOCHS (epochs) must be >= 1, got {cfg.epochs}")
    need(cfg.folds >= 2, f"FOLDS (folds) must be >= 2 for cross-validation, got {cfg.folds}")
    need(cfg.fold is None or 0 <= cfg.fold < cfg.folds,
         f"FOLD (fold) must be in 0..{cfg.folds - 1} for FOLDS={cfg.folds}, got {cfg.fold}")
    need(cfg.limit is None or cfg.limit >= 10 * cfg.folds,
         f"LIMIT (limit) must be at least 10 x FOLDS = {10 * cfg.folds} rows, got {cfg.limit}")
    need(is_known_model(cfg.model), f"unknown model '{cfg.model}'; known: {', '.join(MODEL_NAMES)}, or timm:<name>")
    need(cfg.norm in NORMS, f"norm must be {', '.join(NORMS[:-1])} or {NORMS[-1]}, got '{cfg.norm}'")
    need(cfg.norm == "group" or cfg.model in NORMALISED,
         f"norm={cfg.norm} applies to {', '.join(NORMALISED)}, not to model '{cfg.model}'")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.lr_ref_batch >= 1, f"lr_ref_batch must be >= 1, got {cfg.lr_ref_batch}")
    need(cfg.lr_scaling in ("sqrt", "linear", "none"), f"lr_scaling must be sqrt, linear or none, got '{cfg.lr_scaling}'")
    need(0 <= cfg.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(0 <= cfg.dropout < 1, f"dropout must be in [0, 1), got {cfg.dropout}")
    need(0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(0 < cfg.ema_decay < 1, f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    need(cfg.width >= 1 and cfg.groups >= 1 and cfg.width % cfg.groups == 0,
         f"width ({cfg.width}) must be a positive multiple of groups ({cfg.groups})")
    need(cfg.rotate >= 0 and 0 <= cfg.scale < 1 and 0 <= cfg.shift < 1 and 0 <= cfg.elastic <= 8,
         "augmentation needs rotate >= 0, 0 <= scale < 1, 0 <= shift < 1, 0 <= elastic <= 8 (pixels)")
    need(isinstance(cfg.amp, bool) or cfg.amp in ("bf16", "fp16"), f"amp must be true, false, bf16 or fp16, got '{cfg.amp}'")
    need(cfg.precision in (None, "bf16", "fp16", "fp32"), f"precision is recorded by a run (bf16, fp16 or fp32), got '{cfg.precision}'")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    need(cfg.threads is None or cfg.threads >= 1, f"threads must be >= 1, got {cfg.threads}")
    need(cfg.parallel in ("data", "folds"), f"parallel must be data or folds, got '{cfg.parallel}'")
    need(cfg.world_size >= 1, f"world_size must be >= 1, got {cfg.world_size}")
    need(0 <= cfg.pseudo_rounds <= 5, f"pseudo_rounds must be in 0..5, got {cfg.pseudo_rounds}")
    need(0 <= cfg.pseudo_threshold < 1, f"pseudo_threshold must be in [0, 1), got {cfg.pseudo_threshold}")
    need(cfg.pseudo_epochs is None or cfg.pseudo_epochs >= 1, f"pseudo_epochs must be >= 1, got {cfg.pseudo_epochs}")
    need(cfg.pseudo_temperature > 0, f"pseudo_temperature must be > 0, got {cfg.pseudo_temperature}")
    need(cfg.fold_seed is None or 0 <= cfg.fold_seed < 2**32, f"fold_seed must be in 0..2**32-1, got {cfg.fold_seed}")
    need(cfg.timeout_minutes > 0, f"timeout_minutes must be > 0, got {cfg.timeout_minutes}")
    if cfg.budget is not None:
        budget_seconds(cfg.budget)
        need(cfg.pseudo_rounds == 0, "BUDGET plans no pseudo-label rounds (they did not pay: docs/results.md); "
                                     "set pseudo_rounds=0, or train without BUDGET")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device must be auto, cpu or cuda[:N], got '{cfg.device}'")
    need(bool(cfg.name) and "/" not in cfg.name and not cfg.name.startswith("."),
         f"NAME (name) must be a plain folder name, got '{cfg.name}'")
    if cfg.members:
        members = member_configs(cfg)
        for j, member in enumerate(members):
            try:
                validate(member)
            except UserError as e:
                raise UserError(f"member {j}: {e}") from None
        # a member that sets seed: N collides with the default seed + index of another: the same net twice
        # would count as diversity it is not
        for j, member in enumerate(members):
            twin = next((i for i in range(j) if members[i] == member), None)
            if twin is not None:
                raise UserError(f"members {twin} and {j} would train the identical net (the same settings, seed "
                                f"{member.seed}, fold_seed {member.split_seed}); give one of them another seed")
    return cfg


def member_configs(cfg: Config) -> list[Config]:
    """The ensemble's members as whole configs: the run's settings with each member's overrides. A member
    that sets no seed gets seed + its index, so repeated members are independent nets, and member 0
    trains exactly what the same config without members would; one that sets no fold_seed shares the
    run's folds."""
    if not cfg.members:
        return [cfg]
    return [dataclasses.replace(cfg, members=None, **{"seed": cfg.seed + j, "fold_seed": cfg.split_seed, **overrides})
            for j, overrides in enumerate(cfg.members)]


def nets_tta(cfg: Config) -> bool | None:
    """Whether the run's nets predict with TTA: every member's `tta` alike, else None (they differ)."""
    choices = {member.tta for member in member_configs(cfg)}
    return choices.pop() if len(choices) == 1 else None


def with_tta(cfg: Config, tta: bool) -> Config:
    """cfg with every net predicting with (or without) TTA, the members' own `tta` included."""
    members = [{k: v for k, v in m.items() if k != "tta"} for m in cfg.members] if cfg.members else cfg.members
    return dataclasses.replace(cfg, tta=tta, members=members)


def apply(values: dict[str, Any], cfg: Config, source: str) -> Config:
    updates = {}
    for raw, value in values.items():
        key = _resolve_key(str(raw))
        updates[key] = _coerce(key, value, source)
    return dataclasses.replace(cfg, **updates)


def load(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """The config file (or the defaults), then the overrides, then validation."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: must be a mapping of key: value")
        cfg = apply(data, cfg, str(path))
    if overrides:
        items = settings.parse_items(overrides) if isinstance(overrides, list) else overrides
        cfg = apply(items, cfg, "the command line")
    return validate(cfg)


# Settings that change neither the nets nor their predictions beyond float rounding: how progress is
# shown, where outputs go, how long a collective waits, and the batching and threads of the same sums.
# Everything else, tta included, decides whether a run folder may be resumed.
# precision is a record of what amp meant on the machine that ran: a run resumed on other hardware goes on in
# that hardware's precision (and records it). nets_per_step changes which draws of the global generator a net's
# augmentation and dropout take, not what it trains: a net's resume point goes on stacked or alone.
NOT_TRAINING = ("progress", "runs_dir", "submissions_dir", "threads", "eval_batch_size", "timeout_minutes",
                "precision", "nets_per_step")


# What the planner sets in a budgeted run (planner.py): a run of the same settings and BUDGET resumes whatever plan
# it made
PLANNED = ("members", "tta", "refit")


def training_differences(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """The settings in which a and b train or predict differently, as 'key: a -> b' (leaving out `ignore`)."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]} -> {db[k]}" for k in KEYS if k not in NOT_TRAINING + ignore and da[k] != db[k]]


def same_training(a: Config, b: Config) -> bool:
    """Whether two configs train and predict the same nets (so a run of one may be resumed by the other)."""
    return not training_differences(a, b)


