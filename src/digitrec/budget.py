"""A budgeted run from start to end (`make train BUDGET=30m`): its plan, made from step rates measured here and now
(planner.py) or resumed from the interrupted run it goes on with; kept to as it trains, by `Pace`, asked before each
net or group starts whether what is left still fits: a member about to start takes the epochs that fill the budget
at the pace so far (all its folds alike), and what cannot fit even so is shed from the end (the last member whole),
so no member enters the ensemble with folds missing or unequal and no net is cut short of its schedule; and what it
did, against what it planned, for metrics.json and the run's last line.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from . import config as config_mod
from . import cost, distributed, engine, fileio, planner, runs
from .config import Config
from .distributed import ALONE, Ranks
from .nets import folds_to_train, make_split
from .planner import FINISH_S, PLAN_FILL, Rates, Work, layout_name, minutes

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"  # in the run folder: what was measured and planned


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


# in the run folder, so every rank and a resumed run see them: a member ("m2") or the refit ("refit") shed for time;
# a member ("m1") given other epochs than planned when its first net started, at the pace the run kept until then
SHED = "shed-{}.json"
RESCHEDULED = "epochs-{}.json"


class Pace:
    """Asked before each net or group starts: does what is left still fit the budget, at the pace the finished nets
    kept? From the end, a part that has not started and does not fit is shed whole: the refit, or a member that
    would not fit even at planner.MIN_EPOCHS, so the members kept are always the first ones. Then a member about to
    start takes, for all its nets, the epochs that end the run at PLAN_FILL of the budget at that pace: fewer where
    the machine ran slower than timed, more (up to the first member's) where it ran faster."""

    def __init__(self, cfg: Config, run_dir: Path, nets: dict, blocks: list[tuple[str, list]], ranks: int = 1):
        self.budget_s, self.run_dir, self.ranks = cfg.budget_s, run_dir, ranks  # ranks that share the nets left
        self.nets = nets  # unit -> its plan: epochs, estimated_s, epoch_s (what an epoch more or less costs)
        self.blocks = blocks  # (name, units) in training order: "m0", "m1", ..., "refit"
        self.spent = {"estimated": 0.0, "actual": 0.0}
        self.started = 0.0  # when the nets admitted last started, on the run's clock

    def shed(self) -> set[str]:
        return {name for name, _ in self.blocks if (self.run_dir / SHED.format(name)).is_file()}

    def rescheduled(self) -> dict[int, int]:
        """member -> the epochs its nets train, for the members rescheduled (by any rank, before a kill)."""
        return {int(name[1:]): fileio.read_json(self.run_dir / RESCHEDULED.format(name))["epochs"]
                for name, _ in self.blocks if (self.run_dir / RESCHEDULED.format(name)).is_file()}

    def kept(self, planned: Config) -> Config:
        """The planned config as trained: the members before the first shed one, at the epochs they were
        rescheduled to, and the refit unless shed."""
        shed, epochs = self.shed(), self.rescheduled()
        first_shed = min((int(name[1:]) for name in shed if name != "refit"), default=len(planned.members or [None]))
        members = [{**m, "epochs": epochs[j]} if j in epochs else m
                   for j, m in enumerate(planned.members[:first_shed])] if planned.members else None
        return dataclasses.replace(planned, members=members, refit=planned.refit and "refit" not in shed)

    def _estimated_s(self, unit, epochs: dict[int, int]) -> float:
        net = self.nets[unit]
        return net["estimated_s"] + (epochs.get(unit.member, net["epochs"]) - net["epochs"]) * net["epoch_s"]

    def _left_s(self, shed: set[str], epochs: dict[int, int], pace: float) -> float:
        """What the nets not trained yet, less the shed ones, take at this pace on the ranks that share them."""
        return pace * sum(self._estimated_s(u, epochs) for name, units in self.blocks if name not in shed
                          for u in units if not u.is_done(self.run_dir)) / self.ranks

    def _started(self, units: list) -> bool:
        return any(u.is_done(self.run_dir) or (u.dir(self.run_dir) / "resume.pt").is_file() for u in units)

    def admit(self, units: list) -> bool:
        """Whether these nets (about to start) are still in the plan, and at which epochs (`kept`)."""
        shed, epochs = self.shed(), self.rescheduled()
        pace = self.spent["actual"] / self.spent["estimated"] if self.spent["estimated"] else 1.0
        for name, members in reversed(self.blocks):
            if name in shed:
                continue
            now = clock()
            left = self._left_s(shed, epochs, pace)
            if now + left + FINISH_S <= self.budget_s or name == self.blocks[0][0] or self._started(members):
                break  # it fits; or the first member, or one with nets trained, which stays whole
            fewest = {**epochs, int(name[1:]): planner.MIN_EPOCHS} if name != "refit" else epochs
            if now + self._left_s(shed, fewest, pace) + FINISH_S <= self.budget_s:
                break  # a member that fits at fewer epochs: its first net sets them, below
            why = (f"{minutes(now)} spent and {minutes(left)} left at {pace:.2f}x the estimated pace: past the "
                   f"budget's {minutes(self.budget_s)}")
            fileio.write_json(self.run_dir / SHED.format(name), {"at_s": now, "left_s": left, "pace": pace, "why": why})
            log.info(f"budget: shedding {'the refit' if name == 'refit' else 'member ' + name[1:]} "
                     f"({len(members)} net(s)): {why}")
            shed.add(name)
        member = units[0].member
        starts = dict(self.blocks).get(f"m{member}", [])
        if member and f"m{member}" not in shed and member not in epochs and units[0] in starts \
                and not self._started(starts):
            self._reschedule(member, shed, epochs, pace)
        self.started = clock()
        return not any(units[0] in members for name, members in self.blocks if name in shed)

    def _reschedule(self, member: int, shed: set[str], epochs: dict[int, int], pace: float) -> None:
        """The epochs for every net of this member (none started) that end the run nearest PLAN_FILL of the budget
        at this pace, between planner.MIN_EPOCHS and the first member's; written once, so of ranks deciding at the
        same time the first one's stands."""
        nets = [u for u in self.nets if u.member == member and not u.is_done(self.run_dir)]
        planned = self.nets[nets[0]]["epochs"]
        per_epoch = pace * sum(self.nets[u]["epoch_s"] for u in nets) / self.ranks
        if per_epoch <= 0:
            return
        end = clock() + self._left_s(shed, epochs, pace) + FINISH_S
        most = max(self.nets[u]["epochs"] for u in self.nets if u.member == 0)
        chosen = min(most, max(planner.MIN_EPOCHS, planned - math.ceil((end - self.budget_s * PLAN_FILL) / per_epoch)))
        if chosen == planned:
            return
        why = (f"at {pace:.2f}x the estimated pace {planned} epochs would end the run at {end / self.budget_s:.0%} of "
               f"the budget's {minutes(self.budget_s)}")
        if fileio.write_json(self.run_dir / RESCHEDULED.format(f"m{member}"),
                             {"epochs": chosen, "planned": planned, "pace": pace, "why": why}, replace=False):
            log.info(f"budget: member {member} trains {chosen} epochs, not {planned} ({len(nets)} net(s)): {why}")

    def finished(self, units: list) -> None:
        """The nets admitted last have trained: the pace so far is how long they took against their estimate."""
        self.spent["estimated"] += sum(self._estimated_s(u, self.rescheduled()) for u in units)
        self.spent["actual"] += clock() - self.started


def _slowest(per_rank: list[Rates]) -> Rates:
    """Every rank's rates of a layout, the slowest of each: ranks sharing a machine wait for the last one."""
    common = [k for k in per_rank[0].train if all(k in r.train for r in per_rank)]
    return Rates({k: min(r.train[k] for r in per_rank) for k in common}, min(r.predict for r in per_rank))


def plan_run(cfg: Config, dataset, device: torch.device, ranks: Ranks) -> tuple[Config, dict]:
    """A budgeted run's config and plan.json: the plan of the interrupted run it resumes, else a new plan from step
    rates measured here and now. Every rank times its steps at the same time, so ranks that share a
    machine time their share of it, and all of them choose alike from the slowest rank's rates."""
    say = log.info if ranks.is_main else _quiet  # one plan, told once: fold-parallel ranks log their own nets
    resumable = distributed.share(runs.find_resumable(cfg) if ranks.is_main else None, ranks)
    if resumable is not None:
        saved = config_mod.load(resumable / "config.yaml")
        say(f"budget {cfg.budget}: resuming the plan of {resumable.name}")
        planned = dataclasses.replace(cfg, **{k: getattr(saved, k) for k in (*config_mod.PLANNED, "nets_per_step")})
        return planned, fileio.read_json(resumable / PLAN_FILE)
    by_folds = cfg.parallel == "folds" and ranks.world > 1
    work = Work(len(make_split(cfg, dataset.train_labels).rows), cfg.folds, folds_to_train(cfg),
                len(dataset.test_images), ranks.world if by_folds else 1)
    started = clock()
    data = planner.timing_data(dataset, device)
    layouts, rates = planner.ladder(cfg), {}
    stacks = planner.stack_candidates(cfg, device, len(work.folds_trained))
    say(f"budget {cfg.budget}: timing a few steps of each layout on {device} before planning (seconds)")
    for j, layout in enumerate(layouts):
        if j and not _may_afford(cfg, layouts[:j + 1], rates, work, ranks):
            layouts = layouts[:j]  # a further layout is not worth its timing: the budget cannot take it
            break
        mine = planner.measure(planner.layout_config(cfg, layout), device, data, stacks,
                               ranks if cfg.parallel == "data" else ALONE)
        rates[layout_name(layout)] = _slowest(distributed.gather(mine, ranks))
        say(f"  {planner.describe_rates({layout_name(layout): rates[layout_name(layout)]})[0]}")
    del data
    timing_s, spent = distributed.share((clock() - started, clock()), ranks)
    plan = planner.choose(cfg, layouts, rates, work, spent)
    say(f"plan for BUDGET={cfg.budget}:\n{planner.table(plan, cfg.budget_s, spent)}")
    return plan.config(cfg), planner.record(plan, cfg, rates, spent, timing_s)


def _quiet(_: str) -> None:
    pass


def _may_afford(base: Config, layouts: list[dict], rates: dict[str, Rates], work: Work, ranks: Ranks) -> bool:
    """Whether the budget could take one more layout (the last of `layouts`, not timed yet) at the lowest rung,
    guessing its rates from the layout before it scaled by their FLOPs per image; rank 0's answer, so every rank
    times the same layouts."""
    new, last = layouts[-1], layouts[-2]
    cpu = torch.device("cpu")
    flops = {layout_name(x): cost.flops_per_image(engine.build_net(planner.layout_config(base, x), cpu), cpu)
             for x in (new, last)}
    ratio = flops[layout_name(last)] / flops[layout_name(new)]
    known = rates[layout_name(last)]
    guess = {**rates, layout_name(new): Rates({k: v * ratio for k, v in known.train.items()}, known.predict * ratio)}
    need = clock() + FINISH_S + planner.lowest_rung_s(layouts, guess, work) / work.ranks
    return distributed.share(need <= base.budget_s * PLAN_FILL, ranks)


def pace_for(cfg: Config, run_dir: Path, units: list, ranks: int = 1) -> Pace:
    """The Pace of a budgeted run's nets, from the estimates in its plan.json; `ranks` processes share them."""
    planned = {(net["fold"], net["member"]): net for net in fileio.read_json(run_dir / PLAN_FILE)["nets"]}
    unplanned = {"epochs": 0, "estimated_s": 0.0, "epoch_s": 0.0}  # a pseudo-labelled student: not in the plan
    members = len(config_mod.member_configs(cfg))
    blocks = [(f"m{j}", [u for u in units if u.member == j and u.fold is not None]) for j in range(members)]
    blocks += [("refit", [u for u in units if u.fold is None])] if cfg.refit else []
    return Pace(cfg, run_dir, {u: {**unplanned, **planned.get((u.fold, u.member), {})} for u in units}, blocks, ranks)


def outcome(planned: Config, done: Config, run_dir: Path) -> dict:
    """metrics.json's budget entry: what was planned, what was trained, what was shed or rescheduled and why, and the
    wall time of this process so far (the whole `make train` when it was not resumed)."""
    plan = fileio.read_json(run_dir / PLAN_FILE)
    blocks = [f"m{j}" for j in range(len(planned.members or [None]))] + ["refit"]
    shed = {name: fileio.read_json(run_dir / SHED.format(name))["why"]
            for name in blocks if (run_dir / SHED.format(name)).is_file()}
    rescheduled = {name: fileio.read_json(run_dir / RESCHEDULED.format(name))
                   for name in blocks if (run_dir / RESCHEDULED.format(name)).is_file()}
    wall = clock()
    return {"budget": planned.budget, "budget_s": planned.budget_s, "wall_s": wall,
            "wall_fraction_of_budget": wall / planned.budget_s, "estimated_s": plan["estimated_s"],
            "planned": {"members": len(planned.members or [None]), "refit": planned.refit, "nets": len(plan["nets"])},
            "done": {"members": len(done.members or [None]), "refit": done.refit}, "shed": shed,
            "rescheduled": {name: {k: entry[k] for k in ("planned", "epochs", "why")}
                            for name, entry in rescheduled.items()}}


def summary(budget: dict) -> str:
    """The final line of a budgeted run."""
    changes = f"; shed for time: {', '.join(budget['shed'])}" if budget["shed"] else ""
    changes += "".join(f"; {name} rescheduled at the run's pace: {entry['planned']} -> {entry['epochs']} epochs"
                       for name, entry in budget["rescheduled"].items())
    return (f"budget {budget['budget']}: planned {budget['planned']['members']} member(s)"
            f"{' + refit' if budget['planned']['refit'] else ''}, trained {budget['done']['members']}"
            f"{' + refit' if budget['done']['refit'] else ''}{changes}; {minutes(budget['wall_s'])} of "
            f"{minutes(budget['budget_s'])} ({budget['wall_fraction_of_budget']:.0%})")
