"""The run: data -> folds -> one engine call per net (or per group of nets stepped together) -> OOF metrics ->
averaged submission.

A run trains every ensemble member (config `members`; one when unset) on every fold (each member on its
own folds when it sets fold_seed: bagged folds), then (pseudo_rounds >= 1) a pseudo-labelled student of
every such net, round after round (pseudo.py), then, with `refit: true`, every member of the last round
again on all rows. OOF probabilities are the last round's members' average per row; the submission
averages the refit members (or, without a refit, every fold's members). Resumable per net here
(finished nets are skipped) and per epoch in the engine. Which nets a run trains is nets.py; the metrics and
the submission it ends with, outcome.py. `make predict` is here too: the same nets again, from their weights.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from . import data as data_mod
from . import budget, distributed, engine, fileio, hardware, logs, pseudo, runs, stacked
from .config import Config
from .errors import UserError
from .nets import Split, Unit, make_split, read_split, teachers_of, units_to_train
from .outcome import RunResult, accuracy, finish

log = logging.getLogger(__name__)


def _prepare_run(cfg: Config, dataset: data_mod.Dataset, plan: dict | None = None) -> tuple[Path, Split]:
    """The run folder (a resumed one when the same training was interrupted), locked by this process
    (runs.lock), with its config, data record and folds written, and a budgeted run's plan.json."""
    split = make_split(cfg, dataset.train_labels)
    run_dir = runs.find_resumable(cfg)
    if run_dir is not None:
        same_data = fileio.read_json(run_dir / "data.json")["content_hash"] == dataset.content_hash
        if same_data and _same_split(read_split(run_dir, len(split.member_fold_of)), split):
            runs.lock(run_dir)  # a second process resuming the same folder stops here
            log.info(f"resuming run {run_dir}")
            fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())
            return run_dir, split
        log.info(f"not resuming {run_dir}: it was trained on {'other folds' if same_data else 'other data'}")
    run_dir = runs.new_run_dir(cfg)
    runs.lock(run_dir)  # before config.yaml makes the folder a run another process could find
    fileio.write_json(run_dir / "data.json", {"source": dataset.source, "demo": dataset.demo,
                                              "content_hash": dataset.content_hash,
                                              "train_rows": len(split.rows), "test_rows": len(dataset.test_images)})
    fileio.write_npz(run_dir / "folds.npz", rows=split.rows, fold_of=split.fold_of, member_fold_of=split.member_fold_of)
    if plan is not None:
        fileio.write_json(run_dir / budget.PLAN_FILE, plan)
    # config.yaml last: a folder killed before it is no run at all (runs.list_runs ignores it)
    fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())
    log.info(f"run folder: {run_dir}")
    return run_dir, split


def _same_split(a: Split, b: Split) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("rows", "fold_of", "member_fold_of"))


def _on_device(dataset: data_mod.Dataset, rows: np.ndarray, device: torch.device) -> engine.FoldData:
    """The run's images, labels and test images on the device, copied once for all folds."""
    no_rows = torch.zeros(0, dtype=torch.long)
    return engine.FoldData(torch.from_numpy(dataset.train_images[rows]).to(device),
                           torch.from_numpy(dataset.train_labels[rows]).to(device), no_rows, no_rows,
                           torch.from_numpy(dataset.test_images).to(device))


def _fold_data(tensors: engine.FoldData, fold_of: np.ndarray, fold: int | None) -> engine.FoldData:
    """Fold k's split of the run's rows; fold None (the refit) trains on every row and holds none out."""
    if fold is None:
        return dataclasses.replace(tensors, train_idx=torch.arange(len(fold_of)), val_idx=torch.zeros(0, dtype=torch.long))
    return dataclasses.replace(tensors, train_idx=torch.from_numpy(np.flatnonzero(fold_of != fold)),
                               val_idx=torch.from_numpy(np.flatnonzero(fold_of == fold)))




def _student_selection(student: Unit, units: list[Unit], split: Split, run_dir: Path, cfg: Config,
                       ranks: distributed.Ranks, by_folds: bool) -> pseudo.Selection:
    """What the student learns from: chosen from its teachers' test probabilities and saved in its folder
    (pseudo.npz) by the process that writes its files, then read back by every rank, and by a resumed
    student."""
    path = student.dir(run_dir) / "pseudo.npz"
    if (by_folds or ranks.is_main) and not path.is_file():
        teachers = teachers_of(student, units, split)
        if not teachers:  # the student's own member of the previous round always qualifies
            raise UserError(f"{run_dir}: no net may teach {student.dir(run_dir)}")
        if by_folds:  # another rank may still be training a teacher
            _wait_for(teachers, run_dir, announce=False)
        selection = pseudo.select(np.stack([np.load(t.dir(run_dir) / "test_probs.npy") for t in teachers]), cfg)
        pseudo.save(path, selection, [str(t.dir(run_dir).relative_to(run_dir)) for t in teachers])
    if not by_folds:  # a data-parallel student: the other ranks read what rank 0 wrote
        distributed.barrier(ranks)
    return pseudo.load(path)[0]


def _save_unit(unit_dir: Path, history: list[dict], sitting_s: float) -> float:
    """A trained net's history, then done.json (the net is finished: its weights and predictions are
    written by then), and its resume point is no longer needed. done.json describes the whole net, over every
    sitting a kill split it into: its seconds (every epoch's, from the history, plus what this last sitting spent
    beyond its epochs: set-up and prediction; a stacked net's share of its group's), and how each epoch was
    trained (nets_per_step: the nets in its step, one per epoch). Returns the seconds."""
    epoch_s = [record.get("seconds", 0.0) for record in history]
    # the last sitting began at its history's last "resumed" epoch (engine.sitting_record), else at the first
    epochs_before = max((i for i, record in enumerate(history) if record.get("resumed")), default=0)
    seconds = sum(epoch_s) + max(0.0, sitting_s - sum(epoch_s[epochs_before:]))
    fileio.write_json(unit_dir / "history.json", history)
    fileio.write_json(unit_dir / "done.json", {
        "seconds": seconds, "epochs": len(history), "sittings": 1 + sum(1 for r in history if r.get("resumed")),
        "nets_per_step": [record.get("nets_per_step", 1) for record in history]})
    (unit_dir / "resume.pt").unlink(missing_ok=True)
    return seconds


def _describe(cfg: Config, members: list[Config]) -> None:
    per_step = f" x WORLD {cfg.world_size}" if cfg.world_size > 1 else ""
    log.info(f"model: {cfg.model}  BS {cfg.batch_size} x ACCUM {cfg.accum}{per_step} = {cfg.effective_batch}  "
             f"lr {cfg.scaled_lr:.3g}  epochs {cfg.epochs}" + ("  + refit on all rows" if cfg.refit else ""))
    if cfg.pseudo_rounds:
        log.info(f"pseudo-labels: {cfg.pseudo_rounds} round(s) of students on their fold's rows + test rows labelled by "
                 f"their teachers ({'every teacher agrees, ' if cfg.pseudo_agree else ''}averaged probability >= "
                 f"{cfg.pseudo_threshold:g}; {f'soft targets, T {cfg.pseudo_temperature:g}' if cfg.pseudo_soft else 'hard labels'})")
    if cfg.members:
        for j, (member, overrides) in enumerate(zip(members, cfg.members)):
            log.info(f"member {j}: {member.model} width {member.width}, {member.epochs} epochs, seed {member.seed}, "
                     f"lr {member.scaled_lr:.3g}" + (f"  ({', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""))


def train(cfg: Config) -> RunResult:
    """Train every net of the run, then build its metrics and submission. Under torchrun (WORLD_SIZE > 1)
    every rank calls this; rank 0 returns the result, the others a RunResult without a submission."""
    logs.setup()
    hardware.use_host_settings(cfg)
    ranks = distributed.launched()
    # the processes that share each net's batch, recorded in config.yaml: the LR rule and the resume check see it
    cfg = dataclasses.replace(cfg, world_size=ranks.world if cfg.parallel == "data" else 1)
    # device=auto is decided once (a GPU this torch cannot run on means the CPU), then each rank takes its GPU;
    # settings, then data, are checked before anything is written
    kind = hardware.select_device("auto").type if cfg.device == "auto" else cfg.device
    device = engine.preflight(cfg, distributed.device_for(kind, ranks, cfg.parallel))
    # recorded in config.yaml: what amp and nets_per_step=auto meant on this machine (a budget's plan decides the latter)
    nets_per_step = "auto" if cfg.budget and cfg.nets_per_step == "auto" else stacked.resolve(cfg, device)
    cfg = dataclasses.replace(cfg, precision=hardware.precision(device, cfg.amp), nets_per_step=nets_per_step)
    ranks = distributed.start(device, cfg.timeout_minutes, cfg.parallel)
    try:
        with distributed.peers_watched(ranks):
            result = _train(cfg, device, ranks)
            # no rank leaves the group while rank 0 still writes: gloo aborted the one that did
            # ("terminate called without an active exception")
            distributed.barrier(ranks)
        return result
    finally:
        distributed.stop()


def _train(cfg: Config, device: torch.device, ranks: distributed.Ranks) -> RunResult:
    by_folds = cfg.parallel == "folds" and ranks.world > 1
    logs.for_rank(ranks.rank, own_nets=by_folds)
    if not ranks.is_main:
        distributed.barrier(ranks)  # rank 0 unpacks and caches the data first; the others then read it
    dataset = data_mod.load_data(cfg.data, announce=log.info if ranks.is_main else _quiet)
    if ranks.is_main:
        distributed.barrier(ranks)
    plan = None
    if cfg.budget:  # before the run folder: a budget too small writes nothing
        cfg, plan = budget.plan_run(cfg, dataset, device, ranks)
    if ranks.is_main:
        prepared = _prepare_run(cfg, dataset, plan)
    run_dir, split = distributed.share(prepared if ranks.is_main else None, ranks)
    try:
        return _train_nets(cfg, device, ranks, dataset, run_dir, split)
    finally:
        runs.unlock(run_dir)


def _train_nets(cfg: Config, device: torch.device, ranks: distributed.Ranks, dataset: data_mod.Dataset,
                run_dir: Path, split: Split) -> RunResult:
    by_folds = cfg.parallel == "folds" and ranks.world > 1
    members = config_mod.member_configs(cfg)
    if ranks.is_main:
        mode = "one process" if ranks.world == 1 else \
            f"{ranks.world} processes, {'whole nets per rank' if by_folds else 'data-parallel (DDP)'}"
        per_step = f", up to {cfg.nets_per_step} nets per step" if cfg.nets_per_step > 1 else ""
        log.info(f"device: {device} ({torch.get_num_threads()} threads), {mode}, {cfg.precision}{per_step}")
        _describe(cfg, members)
    tensors = _on_device(dataset, split.rows, device)
    labels = dataset.train_labels[split.rows]
    units = units_to_train(cfg)
    mine = units[ranks.rank::ranks.world] if by_folds else units
    pace = budget.pace_for(cfg, run_dir, units, ranks.world if by_folds else 1) if cfg.budget else None

    def job(unit: Unit) -> stacked.Job:
        """The net's job; a student's selection is made here (small), its data only when it trains (large)."""
        member = unit.config(members, cfg)
        data = _fold_data(tensors, split.member_fold_of[unit.member], unit.fold)
        make_data, rows, soft = (lambda: data), len(data.train_idx), data.labels.ndim == 2
        if unit.round:
            selection = _student_selection(unit, units, split, run_dir, cfg, ranks, by_folds)
            log.info(f"{unit.label(len(members))}: learns from {selection.describe()}")
            make_data = functools.partial(pseudo.student_data, data, selection)
            rows, soft = rows + len(selection.rows), selection.targets.ndim == 2
        return stacked.Job(member, unit.seed(member, cfg.folds), unit.label(len(members)), unit.dir(run_dir), rows,
                           soft, make_data)

    for group in _groups(mine, job, cfg.nets_per_step, run_dir, ranks, by_folds, len(members)):
        if pace is not None:
            if not _admitted(pace, [unit for unit, _ in group], ranks, by_folds):
                log.info(f"{', '.join(one.label for _, one in group)}: shed for time, not trained")
                continue
            as_kept = config_mod.member_configs(pace.kept(cfg))  # a member rescheduled at the run's pace: its epochs
            group = [(unit, dataclasses.replace(one, cfg=unit.config(as_kept, cfg))) for unit, one in group]
        started = time.perf_counter()
        if len(group) == 1:  # one net per step: engine.train_net, also for data-parallel ranks
            one = group[0][1]
            outs = [engine.train_net(one.cfg, one.make_data(), one.seed, one.label, one.unit_dir, device,
                                     ranks=distributed.ALONE if by_folds else ranks)]
        else:
            outs = stacked.train_group([one for _, one in group], device)
        if pace is not None:
            pace.finished([unit for unit, _ in group])
        if not (by_folds or ranks.is_main):
            continue  # a data-parallel net's files are rank 0's to write
        sitting = (time.perf_counter() - started) / len(group)  # a stacked net's share of its group's time
        for (unit, one), out in zip(group, outs):
            seconds = _save_unit(one.unit_dir, out.history, sitting)
            if unit.fold is not None:
                log.info(f"{one.label}: val accuracy {accuracy(out.val_probs, labels[unit.held_out(split)]):.4%} in {seconds:.0f}s")
            else:
                log.info(f"{one.label}: trained on all {len(labels)} rows in {seconds:.0f}s")
    planned = cfg

    def kept_units() -> list[Unit]:  # the plan as done: what was shed for time is not waited for, nor in the run
        return units_to_train(pace.kept(planned))

    if by_folds:  # every rank waits for the others' nets, so the final barrier waits only for finish()
        _wait_for(units, run_dir, announce=ranks.is_main, wanted=kept_units if pace is not None else None)
    if pace is not None:
        cfg = pace.kept(planned)
    if not ranks.is_main:
        return RunResult(run_dir, None, {})
    if pace is None:
        return finish(run_dir, cfg, labels, split, demo=dataset.demo)
    fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())  # make predict and evaluate read the run as done
    result = finish(run_dir, cfg, labels, split, demo=dataset.demo, budget=budget.outcome(planned, cfg, run_dir))
    log.info(budget.summary(result.metrics["budget"]))
    return result


def _groups(units: list[Unit], job, nets_per_step: int, run_dir: Path, ranks: distributed.Ranks, by_folds: bool,
            n_members: int):
    """This process's unfinished nets as (unit, stacked.Job) groups that train together, round after round: a
    round's students are chosen (job()) once the previous round is trained; each job's data is built when its
    group trains."""
    for round_ in range(max((u.round for u in units), default=-1) + 1):
        pending = []
        for unit in (u for u in units if u.round == round_):
            # a data-parallel net is skipped by every rank or by none: rank 0's view of the folder decides
            done = unit.is_done(run_dir) if by_folds else distributed.share(unit.is_done(run_dir), ranks)
            if done:
                log.info(f"{unit.label(n_members)}: already finished, skipped")
            elif nets_per_step == 1:
                yield [(unit, job(unit))]
            else:
                pending.append((unit, job(unit)))
        for indices in stacked.groups([one for _, one in pending], nets_per_step):
            yield [pending[i] for i in indices]


def _admitted(pace: budget.Pace, units: list[Unit], ranks: distributed.Ranks, by_folds: bool) -> bool:
    """Whether a budgeted run's next nets still fit (budget.Pace): each fold-parallel rank asks for its own nets;
    data-parallel ranks train every net together, so rank 0 answers for all."""
    if by_folds:
        return pace.admit(units)
    return distributed.share(pace.admit(units) if ranks.is_main else None, ranks)


def _quiet(_: str) -> None:
    pass


def _wait_for(units: list[Unit], run_dir: Path, announce: bool, poll_s: float = 2.0, wanted=None) -> None:
    """A rank of a fold-parallel run, its own nets done, waits for the other ranks' nets (those `wanted()` still
    lists: another rank of a budgeted run may shed a member meanwhile). A rank that dies makes torchrun stop this
    one too, so the wait cannot outlive the job."""
    waiting = [u for u in units if not u.is_done(run_dir)]
    if waiting and announce:
        log.info(f"waiting for {len(waiting)} net(s) of the other ranks")
    while waiting:
        time.sleep(poll_s)
        still = set(wanted()) if wanted is not None else None
        waiting = [u for u in waiting if not u.is_done(run_dir) and (still is None or u in still)]


@dataclass
class SavedRun:
    """A finished or interrupted run read back: its config, the data it was trained on, its folds."""

    run_dir: Path
    cfg: Config
    record: dict  # data.json
    dataset: data_mod.Dataset
    split: Split

    @property
    def rows(self) -> np.ndarray:
        return self.split.rows

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.train_labels[self.rows]


def open_run(run_dir: Path, overrides: dict | None = None) -> SavedRun:
    """Read a run folder back, checking that the data found now is the data it was trained on."""
    cfg = config_mod.load(run_dir / "config.yaml", overrides)
    hardware.use_host_settings(cfg)  # predict and evaluate run on the run's threads
    record = fileio.read_json(run_dir / "data.json")
    dataset = data_mod.load_data(cfg.data, announce=log.info)
    if dataset.content_hash != record["content_hash"]:
        raise UserError(f"{run_dir}: was trained on other data than {dataset.source} (content hash differs)")
    return SavedRun(run_dir, cfg, record, dataset, read_split(run_dir, len(config_mod.member_configs(cfg))))


def predict(run: str | None, runs_dir: str = "runs", tta: bool | None = None) -> RunResult:
    """Predict again from the saved weights of a run's finished nets, with the run's settings or with TTA
    on or off for every net (a member's own `tta` included), into the run's folder predict-tta<0|1>/ and a
    submission of its own: what training wrote stays as it was."""
    logs.setup()
    saved = open_run(runs.run_of(runs.resolve_run(run, runs_dir)))
    run_dir = saved.run_dir
    cfg = saved.cfg if tta is None else config_mod.with_tta(saved.cfg, tta)
    runs.lock(run_dir)  # not while a `make train` still writes its nets
    try:
        out = runs.prediction_dir(run_dir, config_mod.nets_tta(cfg))
        fileio.write_text(out / "config.yaml", cfg.to_yaml())
        device = hardware.select_device(cfg.device)
        tensors = _on_device(saved.dataset, saved.rows, device)
        members = config_mod.member_configs(cfg)
        for unit in units_to_train(cfg, folds=list(range(cfg.folds)), refit=True):  # every net that may exist
            if not unit.is_done(run_dir):
                continue
            member, label = unit.config(members, cfg), unit.label(len(members))
            data = _fold_data(tensors, saved.split.member_fold_of[unit.member], unit.fold)
            engine.predict_net(engine.load_net(unit.dir(run_dir), member, device), data, member, device,
                               unit.dir(out), label)
            log.info(f"{label}: predicted from {unit.dir(run_dir) / 'weights.pt'}")
        return finish(run_dir, cfg, saved.labels, saved.split, demo=saved.dataset.demo, prediction=out)
    finally:
        runs.unlock(run_dir)
