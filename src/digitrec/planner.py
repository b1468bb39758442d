"""The plan of `make train BUDGET=30m`: the ladder of layouts a plan takes members from, the step rates it is planned
from (`measure`: a few warm steps of a layout on this device, in this precision and thread count, with several nets
per step where that may pay, and prediction the same way), the evidence model of what a plan scores, and `choose`:
among the plans that fit the budget and score about the best by that model, the one that spends the most. A plan is
an ordinary config (the members, their epochs, tta, refit and nets_per_step); budget.py makes it for a run and keeps
the run to it.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from . import config as config_mod
from . import distributed, engine, stacked
from .config import Config
from .distributed import ALONE, Ranks
from .errors import UserError

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
# different layouts gained more (seven nets of four layouts: 87), counted per layout on the members' mean. TTA, the
# nine views: 165 errors against 183 without, on the same five nets' 42000 OOF rows (McNemar p = 0.0009; 2-core
# AMD EPYC, torch 2.14.1, 2026-12-06; docs/results.md).
SINGLE_NET_ERRORS = (86.3, 588.0)
FOLD_NETS_FACTOR = 0.94 * 1.03  # a member's fold nets averaged (no refit), against one net on all rows (the refit)
LAYOUTS_FACTOR = (1.0, 0.93, 0.90, 0.87)  # 1, 2, 3, 4 layouts averaged; each further one 0.99 of the last
TTA_FACTOR = 165 / 183

# The evidence model is no finer than this: its terms come from a few runs, and seeds of one plan scatter far more
# (92-106 test errors). Among the plans within it of the fewest expected errors, the one that spends the most of the
# budget is taken, since compute is what the evidence says buys score. Without it the model's jumps left budgets
# unspent: from one timing of a 2-core CPU, one gn_cnn at the top rung (40 epochs, 88.2 errors) filled 57% of 2 h,
# where gn_cnn x 28 + gn_m5 x 21 (90.0) fill 91%; at 4 h two members at 40 (82.0) filled 74%, three at 31-28 (83.2)
# fill 92%.
EVIDENCE_TOLERANCE = 0.03
# A plan fills this share of what is left of the budget: the rates come from a few steps, a run's epochs scatter by a
# few percent, and the run should end inside its budget, not past it
PLAN_FILL = 0.92
# what a net costs beyond its epochs' steps and predictions (building it, its files), and what the run costs after
# its last net (the OOF metrics, the submission)
NET_OVERHEAD_S = 1.0
EPOCH_OVERHEAD_S = 0.05
FINISH_S = 3.0
# Each rate is the median of TIMED_RUNS runs of calls lasting TIMED_S or more: on a 2-core VM one such run scattered
# by +-25% (1,330-2,550 img/s for the same steps), the median of five by about a third of that
TIMED_S = 0.5
TIMED_RUNS = 5
MAX_TIMED_CALLS = 256
PREDICT_ROWS = 512


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


def _seconds_per_call(call: Callable[[], object], device: torch.device, ranks: Ranks = ALONE) -> float:
    """Seconds one call takes: after an untimed one (it builds the kernels' caches), calls in runs of 1, 2, 4, ...
    until a run lasts TIMED_S (a few steps of a slow layout, many of a fast one: the same precision for both), then
    the median of TIMED_RUNS runs that long. Rank 0 says when to stop, so data-parallel ranks, whose steps wait for
    each other, take the same steps."""

    def run(calls: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(calls):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    call()
    calls = 1
    while True:
        seconds = run(calls)
        if distributed.share(seconds >= TIMED_S or calls >= MAX_TIMED_CALLS, ranks):
            break
        calls *= 2
    runs = [seconds, *(run(calls) for _ in range(TIMED_RUNS - 1))]
    return statistics.median(runs) / calls


def step_rate(cfg: Config, device: torch.device, data: engine.FoldData, nets: int, ranks: Ranks = ALONE) -> float:
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
    return nets * window / _seconds_per_call(update, device, ranks)


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
    predict_s = _seconds_per_call(lambda: engine.predict_proba(net, images, cfg, device), device)
    return Rates(train, len(images) / predict_s)


def timing_data(dataset, device: torch.device, rows: int = 4096) -> engine.FoldData:
    """What the steps are timed on: the first training rows of a data.Dataset on the device (what the images show
    does not change a step's time)."""
    rows = min(len(dataset.train_labels), rows)
    images = torch.from_numpy(dataset.train_images[:rows]).to(device)
    return engine.FoldData(images, torch.from_numpy(dataset.train_labels[:rows]).to(device), torch.arange(rows),
                           torch.arange(0), images[:0])


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
    the refit), with its estimated seconds and their share an epoch (what a shorter schedule saves: budget.Pace)."""
    fold, refit_cost = _costs(layouts, tta, nets_per_step, rates, work)
    nets = [{"net": f"fold {k} member {j}", "fold": k, "member": j, "layout": layout_name(x), "epochs": epochs[j],
             "estimated_s": fold[j].seconds(epochs[j]), "epoch_s": fold[j].per_epoch}
            for j, x in enumerate(layouts) for k in work.folds_trained]
    if refit:
        nets += [{"net": f"refit member {j}", "fold": None, "member": j, "layout": layout_name(x), "epochs": epochs[j],
                  "estimated_s": refit_cost[j].seconds(epochs[j]), "epoch_s": refit_cost[j].per_epoch}
                 for j, x in enumerate(layouts)]
    return nets


def lowest_rung_s(layouts: list[dict], rates: dict[str, Rates], work: Work) -> float:
    """The cheapest plan of these layouts: one net per fold each at the fewest epochs, no TTA, no refit."""
    fastest = max(set.intersection(*(set(rates[layout_name(x)].train) for x in layouts)),
                  key=lambda k: rates[layout_name(layouts[0])].train[k])
    nets = estimate(layouts, [MIN_EPOCHS] * len(layouts), False, False, fastest, rates, work)
    return sum(net["estimated_s"] for net in nets)


class Candidate(NamedTuple):
    """A plan `choose` weighs: its expected test errors and its seconds over all ranks, then what it trains."""

    errors: float
    seconds: float
    layouts: list[dict]
    epochs: list[int]
    tta: bool
    refit: bool
    nets_per_step: int


def choose(base: Config, layouts: list[dict], rates: dict[str, Rates], work: Work, spent_s: float) -> Plan:
    """Among the plans that fit PLAN_FILL of the budget left after `spent_s` (data, timing) and whose expected test
    errors are within EVIDENCE_TOLERANCE of the fewest, the one that spends the most (of those that spend the same
    to a percent of the budget, the one with the fewest). Members come from `layouts` in order (those timed: rates),
    every one but the last at the same epochs and the last at as many or fewer, so a budget is filled a member at a
    time. A budget too small for the lowest rung (the first layout, MIN_EPOCHS, one net per fold) is one line naming
    the smallest that fits."""
    available = (base.budget_s * PLAN_FILL - spent_s - FINISH_S) * work.ranks
    folds = len(work.folds_trained)
    candidates: list[Candidate] = []
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
                        candidates.append(Candidate(expected_errors(epochs, tta, refit),
                                                    head + seconds(members - 1, last), chosen, epochs, tta, refit,
                                                    nets_per_step))
    if not candidates:
        need = (spent_s + FINISH_S + lowest_rung_s(layouts[:1], rates, work) / work.ranks) / PLAN_FILL
        raise UserError(f"BUDGET={base.budget} is too small here: one {layout_name(layouts[0])} net per fold at "
                        f"{MIN_EPOCHS} epochs needs BUDGET={_round_up(need)} or more on this machine")
    # one plan at several nets per step: only its fastest (stacking where it measured faster) is a candidate
    fastest: dict[tuple, Candidate] = {}
    for c in candidates:
        key = (tuple(c.epochs), c.tta, c.refit)
        if key not in fastest or c.seconds < fastest[key].seconds:
            fastest[key] = c
    fewest = min(c.errors for c in fastest.values())
    percent = 0.01 * base.budget_s * work.ranks  # plans that spend the same to a percent: the fewer errors
    best = max((c for c in fastest.values() if c.errors <= fewest * (1 + EVIDENCE_TOLERANCE)),
               key=lambda c: (int(c.seconds / percent), -c.errors))
    return Plan([{**x, "epochs": e} for x, e in zip(best.layouts, best.epochs)], best.tta, best.refit,
                best.nets_per_step, estimate(best.layouts, best.epochs, best.tta, best.refit, best.nets_per_step,
                                             rates, work), best.seconds / work.ranks, best.errors)


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
