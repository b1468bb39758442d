"""`make train BUDGET=30m`: the run that the evidence says scores best within the time there is, on this machine.

Before training, `measure` times a few warm steps of each layout of the ladder on this device, in this precision and
thread count (with several nets per step where that may pay), and prediction the same way. `choose` then estimates
every plan (members of the ladder, epochs, TTA, refit, nets per step) from those rates and picks, among the plans
that fit, the one with the fewest test errors by the evidence model below. The plan is an ordinary config: the
members, epochs, tta, refit and nets_per_step it sets are written in the run's config.yaml, so resume, `make predict`,
`make evaluate` and `make compare` read a budgeted run as any other. While the run trains, `Pace` is asked before
each net or group whether what is left still fits; when it does not, the last member that has not started is shed
whole (all its folds), then the next, so no member enters the ensemble with folds missing and no net is cut short.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import config as config_mod
from . import cost, distributed, engine, fileio, runs, stacked
from .config import Config
from .distributed import ALONE, Ranks
from .errors import UserError
from .nets import folds_to_train, make_split

log = logging.getLogger(__name__)

# The ladder: the layouts a plan takes members from, in order (docs/results.md): Deotte's CNN; the unpadded 5x5 and
# 7x7 stacks at the widths configs/cpu-best.yaml measured on the whole OOF (each about as costly as the CNN on a CPU,
# 99.55% alone, 99.617% the three averaged); then the CNN at width 48, which averaged worst with the width-32 one on
# fold 0. A base config with `members` is its own ladder.
DEFAULT_LADDER = ({"model": "gn_cnn", "width": 32, "dropout": 0.4}, {"model": "gn_m5", "width": 16, "dropout": 0.25},
                  {"model": "gn_m7", "width": 24, "dropout": 0.25}, {"model": "gn_cnn", "width": 48, "dropout": 0.4})
MIN_EPOCHS, MAX_EPOCHS = 4, 40  # past about 40 a net gained nothing measured

# The evidence model: expected errors on Kaggle's 28000 test rows. One gn_cnn trained on all rows made about 119 at 18
# epochs and about 100 at 40-44 (seven seeds: 92-106), fitted as a + b / epochs. Averaging nets of one layout gained
# little (nine made 91 where one made about 100; six seeds on one fold: 40 errors against 41.2 on average), so a
# member's five fold nets count as about 0.94 of one net, less a little for each training on 80% of the rows; nets of
# different layouts gained more (seven nets of four layouts: 87), counted per layout on the members' mean. TTA is not
# resolved by our measurements (+0.04 points on one run's OOF, nothing on another): counted as a small gain.
SINGLE_NET_ERRORS = (86.3, 588.0)
FOLD_NETS_FACTOR = 0.94 * 1.03  # a member's fold nets averaged (no refit), against one net on all rows (the refit)
LAYOUTS_FACTOR = (1.0, 0.93, 0.90, 0.87)  # 1, 2, 3, 4 layouts averaged; each further one 0.99 of the last
TTA_FACTOR = 0.97
TEST_ROWS = 28000

# A plan fills this share of what is left of the budget: the rates come from a few steps, a run's epochs scatter by a
# few percent, and the run should end inside its budget, not past it
PLAN_FILL = 0.92
# what a net costs beyond its epochs' steps and predictions (building it, its files), and what the run costs after
# its last net (the OOF metrics, the submission)
NET_OVERHEAD_S = 1.0
EPOCH_OVERHEAD_S = 0.05
FINISH_S = 3.0
TIMED_STEPS = 2  # after as many untimed ones
PREDICT_ROWS = 512


def process_seconds() -> float:
    """Seconds since this process started (Linux: its start time in /proc), so a budget counts the interpreter's and
    torch's start-up too; elsewhere, since this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()
clock: Callable[[], float] = process_seconds  # the run's clock; tests put a faster one in


def minutes(seconds: float) -> str:
    """90 -> '1.5 min'; 5400 -> '1 h 30 min'."""
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):02d} min"


# ---------------------------------------------------------------- the ladder and its step rates


def layout_name(layout: dict) -> str:
    return f"{layout['model']} w{layout['width']}"


def ladder(base: Config) -> list[dict]:
    """The layouts a plan may take members from, in the order it takes them: the base config's members (without the
    epochs and TTA the plan sets), else its own layout followed by DEFAULT_LADDER's others."""
    if base.members:
        return [{k: v for k, v in member.items() if k not in ("epochs", "tta")} for member in base.members]
    own = {"model": base.model, "width": base.width, "dropout": base.dropout}
    return [own] + [layout for layout in DEFAULT_LADDER if layout_name(layout) != layout_name(own)]


@dataclass
class Rates:
    """What a net of one layout costs here: images/s of training over all nets of a step, by nets per step, and
    images/s of prediction (one view)."""

    train: dict[int, float]
    predict: float


def stack_candidates(base: Config, device: torch.device, folds: int) -> tuple[int, ...]:
    """The nets per step worth timing: one and a number the config fixes; else on CUDA 1, 2, 4, 8 (a member's folds
    stack) and on the CPU 1 and 2, where stacking has measured slower; one for data-parallel ranks."""
    if base.nets_per_step != "auto":  # at most this many; refit nets, whose layouts differ, train alone
        return tuple(sorted({1, base.nets_per_step}))
    if base.world_size > 1:
        return (1,)
    wanted = (1, 2, 4, 8) if device.type == "cuda" else (1, 2)
    return tuple(k for k in wanted if k <= max(1, folds))


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    run()  # warm: the first step builds the kernels' caches
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def step_rate(cfg: Config, device: torch.device, data: engine.FoldData, nets: int, steps: int = TIMED_STEPS,
              ranks: Ranks = ALONE) -> float:
    """Images/s over all nets of `nets` nets stepped together (engine.Trainer.update for one, stacked.StackedTrainer
    for more), each on its own windows of BS x ACCUM: what an epoch of the run's training costs."""
    window = cfg.effective_batch
    order = torch.Generator().manual_seed(cfg.seed)

    def windows() -> list[torch.Tensor]:
        return [data.train_idx[torch.randint(len(data.train_idx), (window,), generator=order)] for _ in range(nets)]

    if nets == 1:
        trainer = engine.make_trainer(cfg, device, len(data.train_idx), ranks)
        trainer.model.train()
        update = lambda: trainer.update(windows()[0], data)  # noqa: E731 (one net, as train_net steps it)
    else:
        group = stacked.StackedTrainer(cfg, [cfg.seed + i for i in range(nets)], device, len(data.train_idx))
        group.train()
        update = lambda: group.update(windows(), [data] * nets)  # noqa: E731 (as stacked.train_group steps them)

    def run() -> None:
        for _ in range(steps):
            update()

    return steps * nets * window / _seconds(run, device)


def measure(cfg: Config, device: torch.device, data: engine.FoldData, stacks: tuple[int, ...],
            ranks: Ranks = ALONE) -> Rates:
    """One layout's Rates (cfg: the base config with the layout's settings) on this device, precision and thread
    count. A number of nets per step that runs out of memory is left out, so never chosen; the ranks of a
    data-parallel run time their steps together."""
    train = {}
    for nets in stacks if stacked.why_not_stacked(cfg) is None else (1,):
        try:
            train[nets] = step_rate(cfg, device, data, nets, ranks=ranks)
        except torch.OutOfMemoryError:
            log.info(f"{cfg.model} w{cfg.width}: {nets} nets per step ran out of memory here; not planned")
            torch.cuda.empty_cache()
    net = engine.build_net(cfg, device)
    images = data.images[:PREDICT_ROWS]
    return Rates(train, len(images) / _seconds(lambda: engine.predict_proba(net, images, cfg, device), device))


def layout_config(base: Config, layout: dict) -> Config:
    """The base config with one layout of the ladder: what a member of that layout trains with."""
    return config_mod.apply(layout, dataclasses.replace(base, members=None), "the ladder")


# ---------------------------------------------------------------- plans and their cost


@dataclass(frozen=True)
class Work:
    """The sizes a run's time follows from."""

    rows: int  # the run's training rows (all of them: what a refit net trains on)
    folds: int  # the run's folds (a fold net trains on rows x (folds - 1) / folds)
    folds_trained: list[int]
    test_rows: int
    ranks: int = 1  # processes that train whole nets side by side (parallel: folds)


@dataclass
class Plan:
    """A budgeted run's choice, and what it was estimated to cost and to score."""

    members: list[dict]  # ladder layouts with their epochs
    tta: bool
    refit: bool
    nets_per_step: int
    nets: list[dict]  # every net: net, layout, epochs, estimated_s
    estimated_s: float  # every net, on the ranks that share them
    expected_errors: float

    def config(self, base: Config) -> Config:
        """The base config with the plan's settings: what config.yaml records and the run trains."""
        return config_mod.validate(dataclasses.replace(base, members=self.members, tta=self.tta, refit=self.refit,
                                                       nets_per_step=self.nets_per_step))


def expected_errors(epochs: list[int], tta: bool, refit: bool) -> float:
    """Test errors by the evidence model, for members trained `epochs` each (SINGLE_NET_ERRORS, FOLD_NETS_FACTOR,
    LAYOUTS_FACTOR, TTA_FACTOR): the members' mean single-net errors, less what averaging them gains."""
    a, b = SINGLE_NET_ERRORS
    layouts = len(epochs)
    factor = LAYOUTS_FACTOR[min(layouts, len(LAYOUTS_FACTOR)) - 1] * 0.99 ** max(0, layouts - len(LAYOUTS_FACTOR))
    single = sum(a + b / e for e in epochs) / layouts
    return single * factor * (TTA_FACTOR if tta else 1.0) * (1.0 if refit else FOLD_NETS_FACTOR)


@dataclass(frozen=True)
class NetCost:
    """One net's seconds as `per_epoch` x epochs + `fixed` (its final predictions, its set-up and files)."""

    per_epoch: float
    fixed: float

    def seconds(self, epochs: int) -> float:
        return self.per_epoch * epochs + self.fixed


def net_cost(rates: Rates, nets_per_step: int, train_rows: int, val_rows: int, test_rows: int, views: int) -> NetCost:
    """One net's share of its step's time: each epoch's training and its held-out rows predicted once, then its
    held-out and test rows predicted in every view."""
    per_epoch = train_rows / rates.train[nets_per_step] + val_rows / rates.predict + EPOCH_OVERHEAD_S
    return NetCost(per_epoch, (val_rows + test_rows) * views / rates.predict + NET_OVERHEAD_S)


def _costs(layouts: list[dict], tta: bool, nets_per_step: int, rates: dict[str, Rates],
           work: Work) -> tuple[list[NetCost], list[NetCost]]:
    """Each layout's fold-net cost and refit-net cost (refit nets have no twins to stack with)."""
    views = 9 if tta else 1  # augment.tta_views
    val_rows = work.rows // work.folds
    fold = [net_cost(rates[layout_name(x)], nets_per_step, work.rows - val_rows, val_rows, work.test_rows, views)
            for x in layouts]
    refit = [net_cost(rates[layout_name(x)], 1, work.rows, 0, work.test_rows, views) for x in layouts]
    return fold, refit


def estimate(layouts: list[dict], epochs: list[int], tta: bool, refit: bool, nets_per_step: int,
             rates: dict[str, Rates], work: Work) -> list[dict]:
    """Every net of a plan, in the order a budgeted run trains them (member after member, all folds of each, then
    the refit), with its estimated seconds."""
    fold, refit_cost = _costs(layouts, tta, nets_per_step, rates, work)
    nets = [{"net": f"fold {k} member {j}", "fold": k, "member": j, "layout": layout_name(x), "epochs": epochs[j],
             "estimated_s": fold[j].seconds(epochs[j])} for j, x in enumerate(layouts) for k in work.folds_trained]
    if refit:
        nets += [{"net": f"refit member {j}", "fold": None, "member": j, "layout": layout_name(x), "epochs": epochs[j],
                  "estimated_s": refit_cost[j].seconds(epochs[j])} for j, x in enumerate(layouts)]
    return nets


def lowest_rung_s(layouts: list[dict], rates: dict[str, Rates], work: Work) -> float:
    """The cheapest plan of these layouts: one net per fold each at the fewest epochs, no TTA, no refit."""
    fastest = max(set.intersection(*(set(rates[layout_name(x)].train) for x in layouts)),
                  key=lambda k: rates[layout_name(layouts[0])].train[k])
    nets = estimate(layouts, [MIN_EPOCHS] * len(layouts), False, False, fastest, rates, work)
    return sum(net["estimated_s"] for net in nets)


def choose(base: Config, layouts: list[dict], rates: dict[str, Rates], work: Work, spent_s: float) -> Plan:
    """The plan with the fewest expected test errors among those that fit PLAN_FILL of the budget left after
    `spent_s` (data, timing); the cheaper of equals. Members come from `layouts` in order (those timed: rates), every
    one but the last at the same epochs and the last at as many or fewer, so a budget is filled a member at a time.
    A budget too small for the lowest rung (the first layout, MIN_EPOCHS, one net per fold) is one line naming the
    smallest that fits."""
    available = (base.budget_s * PLAN_FILL - spent_s - FINISH_S) * work.ranks
    folds = len(work.folds_trained)
    best: tuple | None = None
    for members in range(1, len(layouts) + 1):
        chosen = layouts[:members]
        # nets per step that every chosen layout measured; more than one only where it measured faster
        for nets_per_step in sorted(set.intersection(*(set(rates[layout_name(x)].train) for x in chosen))):
            for tta in (False, True):
                fold, refit_cost = _costs(chosen, tta, nets_per_step, rates, work)
                for refit in (False, True):
                    def seconds(j: int, e: int) -> float:
                        return folds * fold[j].seconds(e) + (refit_cost[j].seconds(e) if refit else 0.0)

                    for full in range(MIN_EPOCHS, MAX_EPOCHS + 1):
                        head = sum(seconds(j, full) for j in range(members - 1))
                        # the last member: the most epochs (up to the others') that fit
                        last = full if members == 1 else next(
                            (e for e in range(full, MIN_EPOCHS - 1, -1) if head + seconds(members - 1, e) <= available),
                            None)
                        if last is None or head + seconds(members - 1, last) > available:
                            continue
                        epochs = [full] * (members - 1) + [last]
                        candidate = (expected_errors(epochs, tta, refit), head + seconds(members - 1, last))
                        if best is None or candidate < best[:2]:
                            best = (*candidate, chosen, epochs, tta, refit, nets_per_step)
    if best is None:
        need = (spent_s + FINISH_S + lowest_rung_s(layouts[:1], rates, work) / work.ranks) / PLAN_FILL
        raise UserError(f"BUDGET={base.budget} is too small here: one {layout_name(layouts[0])} net per fold at "
                        f"{MIN_EPOCHS} epochs needs BUDGET={_round_up(need)} or more on this machine")
    errors, seconds_total, chosen, epochs, tta, refit, nets_per_step = best
    return Plan([{**x, "epochs": e} for x, e in zip(chosen, epochs)], tta, refit, nets_per_step,
                estimate(chosen, epochs, tta, refit, nets_per_step, rates, work), seconds_total / work.ranks, errors)


def _round_up(seconds: float) -> str:
    """A budget a user can type, at least `seconds`: whole minutes (whole 10 s below two minutes)."""
    if seconds < 120:
        return f"{10 * math.ceil(seconds / 10)}s"
    return f"{math.ceil(seconds / 60)}m"


def describe_rates(rates: dict[str, Rates]) -> list[str]:
    """One line per layout: what `measure` found (make bench prints the same)."""
    lines = []
    for name, rate in rates.items():
        train = ", ".join(f"{rate.train[k]:,.0f} img/s {k} net{'s' if k > 1 else ''}/step" for k in sorted(rate.train))
        lines.append(f"{name}: train {train}; predict {rate.predict:,.0f} img/s")
    return lines


def table(plan: Plan, budget_s: float, spent_s: float) -> str:
    """The plan as it is printed before training: every net, then the total against the budget."""
    lines = [f"{'net':<20} {'layout':<12} {'epochs':>6} {'est. min':>9}"]
    lines += [f"{net['net']:<20} {net['layout']:<12} {net['epochs']:>6} {net['estimated_s'] / 60:>9.1f}"
              for net in plan.nets]
    total = spent_s + plan.estimated_s + FINISH_S
    lines.append(f"total {minutes(total)} of the budget's {minutes(budget_s)} ({total / budget_s:.0%}; "
                 f"{minutes(spent_s)} spent on data and timing){', TTA' if plan.tta else ''}"
                 f"{', then the refit' if plan.refit else ''}, {plan.nets_per_step} net(s) per step; "
                 f"about {plan.expected_errors:.0f} test errors by the evidence model")
    return "\n".join(lines)


def record(plan: Plan, base: Config, rates: dict[str, Rates], spent_s: float, timing_s: float) -> dict:
    """plan.json: what was measured and planned, beside the run's config.yaml."""
    return {"budget": base.budget, "budget_s": base.budget_s, "spent_before_training_s": spent_s,
            "timing_s": timing_s, "rates": {name: dataclasses.asdict(rate) for name, rate in rates.items()},
            "members": plan.members, "tta": plan.tta, "refit": plan.refit, "nets_per_step": plan.nets_per_step,
            "estimated_s": plan.estimated_s, "expected_test_errors": plan.expected_errors, "nets": plan.nets}


# ---------------------------------------------------------------- keeping to the budget while the run trains


SHED = "shed-{}.json"  # in the run folder: a member ("m2") or the refit ("refit") shed for time


class Pace:
    """Asked before each net or group starts: does what is left still fit the budget, at the pace the finished nets
    kept? If not, shed what has not started from the end (the refit, then the last member, all its folds), until it
    fits or only the first member is left. Shed parts are files in the run folder, so every rank and a resumed run
    see them."""

    def __init__(self, cfg: Config, run_dir: Path, estimates: dict, blocks: list[tuple[str, list]]):
        self.budget_s, self.run_dir = cfg.budget_s, run_dir
        self.estimates = estimates  # unit -> estimated seconds
        self.blocks = blocks  # (name, units) in training order: "m0", "m1", ..., "refit"
        self.spent = {"estimated": 0.0, "actual": 0.0}
        self.started = 0.0  # when the nets admitted last started, on the run's clock

    def shed(self) -> set[str]:
        return {name for name, _ in self.blocks if (self.run_dir / SHED.format(name)).is_file()}

    def _started(self, units: list) -> bool:
        return any(u.is_done(self.run_dir) or (u.dir(self.run_dir) / "resume.pt").is_file() for u in units)

    def admit(self, units: list) -> bool:
        """Whether these nets (about to start) are still in the plan; sheds from the end first if it must. Blocks
        are shed strictly from the end, so the members kept are always the first ones."""
        shed = self.shed()
        pace = self.spent["actual"] / self.spent["estimated"] if self.spent["estimated"] else 1.0
        for name, members in reversed(self.blocks):
            if name in shed:
                continue
            now = clock()
            left = pace * sum(self.estimates[u] for n, us in self.blocks if n not in shed for u in us
                              if not u.is_done(self.run_dir))
            if now + left + FINISH_S <= self.budget_s or name == self.blocks[0][0] or self._started(members):
                break  # it fits; or the first member, or one with nets trained, which stays whole
            why = (f"{minutes(now)} spent and {minutes(left)} left at {pace:.2f}x the estimated pace: past the "
                   f"budget's {minutes(self.budget_s)}")
            fileio.write_json(self.run_dir / SHED.format(name), {"at_s": now, "left_s": left, "pace": pace, "why": why})
            log.info(f"budget: shedding {'the refit' if name == 'refit' else 'member ' + name[1:]} "
                     f"({len(members)} net(s)): {why}")
            shed.add(name)
        self.started = clock()
        return not any(units[0] in members for name, members in self.blocks if name in shed)

    def finished(self, units: list) -> None:
        """The nets admitted last have trained: the pace so far is how long they took against their estimate."""
        self.spent["estimated"] += sum(self.estimates[u] for u in units)
        self.spent["actual"] += clock() - self.started


def kept(cfg: Config, shed: set[str]) -> Config:
    """The planned config less what was shed: the members before the first shed one, the refit unless shed."""
    first_shed = min((int(name[1:]) for name in shed if name != "refit"), default=len(cfg.members or [None]))
    members = cfg.members[:first_shed] if cfg.members else None
    return dataclasses.replace(cfg, members=members, refit=cfg.refit and "refit" not in shed)


# ---------------------------------------------------------------- a budgeted run, start to end

PLAN_FILE = "plan.json"


def _slowest(per_rank: list[Rates]) -> Rates:
    """Every rank's rates of a layout, the slowest of each: ranks sharing a machine wait for the last one."""
    return Rates({k: min(r.train[k] for r in per_rank) for k in per_rank[0].train if all(k in r.train for r in per_rank)},
                 min(r.predict for r in per_rank))


def plan_run(cfg: Config, dataset, device: torch.device, ranks: Ranks) -> tuple[Config, dict]:
    """A budgeted run's config and plan.json: the plan of the interrupted run it resumes, else a new plan from step
    rates measured here and now. Every rank times its steps at the same time, so ranks that share a
    machine time their share of it, and all of them choose alike from the slowest rank's rates."""
    resumable = distributed.share(runs.find_resumable(cfg) if ranks.is_main else None, ranks)
    if resumable is not None:
        saved = config_mod.load(resumable / "config.yaml")
        log.info(f"budget {cfg.budget}: resuming the plan of {resumable.name}")
        planned = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in (*config_mod.PLANNED, "nets_per_step")})
        return planned, fileio.read_json(resumable / PLAN_FILE)
    by_folds = cfg.parallel == "folds" and ranks.world > 1
    work = Work(len(make_split(cfg, dataset.train_labels).rows), cfg.folds, folds_to_train(cfg),
                len(dataset.test_images), ranks.world if by_folds else 1)
    started = clock()
    rows = min(len(dataset.train_labels), 4096)
    images = torch.from_numpy(dataset.train_images[:rows]).to(device)
    data = engine.FoldData(images, torch.from_numpy(dataset.train_labels[:rows]).to(device), torch.arange(rows),
                           torch.arange(0), images[:0])
    layouts, rates = ladder(cfg), {}
    stacks = stack_candidates(cfg, device, len(work.folds_trained))
    log.info(f"budget {cfg.budget}: timing a few steps of each layout on {device} before planning (seconds)")
    for j, layout in enumerate(layouts):
        if j and not _may_afford(cfg, layouts[:j + 1], rates, work, ranks):
            layouts = layouts[:j]  # a further layout is not worth its timing: the budget cannot take it
            break
        mine = measure(layout_config(cfg, layout), device, data, stacks, ranks if cfg.parallel == "data" else ALONE)
        rates[layout_name(layout)] = _slowest(distributed.gather(mine, ranks))
        log.info(f"  {describe_rates({layout_name(layout): rates[layout_name(layout)]})[0]}")
    del images, data
    timing_s, spent = distributed.share((clock() - started, clock()), ranks)
    plan = choose(cfg, layouts, rates, work, spent)
    log.info(f"plan for BUDGET={cfg.budget}:\n{table(plan, cfg.budget_s, spent)}")
    return plan.config(cfg), record(plan, cfg, rates, spent, timing_s)


def _may_afford(base: Config, layouts: list[dict], rates: dict[str, Rates], work: Work, ranks: Ranks) -> bool:
    """Whether the budget could take one more layout (the last of `layouts`, not timed yet) at the lowest rung,
    guessing its rates from the layout before it scaled by their FLOPs per image; rank 0's answer, so every rank
    times the same layouts."""
    new, last = layouts[-1], layouts[-2]
    flops = {layout_name(x): cost.flops_per_image(engine.build_net(layout_config(base, x), torch.device("cpu")),
                                                  torch.device("cpu")) for x in (new, last)}
    ratio = flops[layout_name(last)] / flops[layout_name(new)]
    known = rates[layout_name(last)]
    guess = {**rates, layout_name(new): Rates({k: v * ratio for k, v in known.train.items()}, known.predict * ratio)}
    need = clock() + FINISH_S + lowest_rung_s(layouts, guess, work) / work.ranks
    return distributed.share(need <= base.budget_s * PLAN_FILL, ranks)


def pace_for(cfg: Config, run_dir: Path, units: list) -> Pace:
    """The Pace of a budgeted run's nets, from the estimates in its plan.json."""
    estimated = {(net["fold"], net["member"]): net["estimated_s"] for net in fileio.read_json(run_dir / PLAN_FILE)["nets"]}
    members = len(config_mod.member_configs(cfg))
    blocks = [(f"m{j}", [u for u in units if u.member == j and u.fold is not None]) for j in range(members)]
    blocks += [("refit", [u for u in units if u.fold is None])] if cfg.refit else []
    return Pace(cfg, run_dir, {u: estimated.get((u.fold, u.member), 0.0) for u in units}, blocks)


def outcome(planned: Config, done: Config, run_dir: Path) -> dict:
    """metrics.json's budget entry: what was planned, what was trained, what was shed and why, and the wall time of
    this process so far (the whole `make train` when it was not resumed)."""
    plan = fileio.read_json(run_dir / PLAN_FILE)
    shed = {name: fileio.read_json(run_dir / SHED.format(name))["why"]
            for name in [f"m{j}" for j in range(len(planned.members or [None]))] + ["refit"]
            if (run_dir / SHED.format(name)).is_file()}
    wall = clock()
    return {"budget": planned.budget, "budget_s": planned.budget_s, "wall_s": wall,
            "wall_fraction_of_budget": wall / planned.budget_s, "estimated_s": plan["estimated_s"],
            "planned": {"members": len(planned.members or [None]), "refit": planned.refit, "nets": len(plan["nets"])},
            "done": {"members": len(done.members or [None]), "refit": done.refit}, "shed": shed}


def summary(budget: dict) -> str:
    """The final line of a budgeted run."""
    shed = f"; shed for time: {', '.join(budget['shed'])}" if budget["shed"] else ""
    return (f"budget {budget['budget']}: planned {budget['planned']['members']} member(s)"
            f"{' + refit' if budget['planned']['refit'] else ''}, trained {budget['done']['members']}"
            f"{' + refit' if budget['done']['refit'] else ''}{shed}; {minutes(budget['wall_s'])} of "
            f"{minutes(budget['budget_s'])} ({budget['wall_fraction_of_budget']:.0%})")
