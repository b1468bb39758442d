"""The run: data -> folds -> one engine call per net (or per group of nets stepped together) -> OOF metrics ->
averaged submission.

A run trains every ensemble member (config `members`; one when unset) on every fold (each member on its
own folds when it sets fold_seed: bagged folds), then (pseudo_rounds >= 1) a pseudo-labelled student of
every such net, round after round (pseudo.py), then, with `refit: true`, every member of the last round
again on all rows. OOF probabilities are the last round's members' average per row; the submission
averages the refit members (or, without a refit, every fold's members). Resumable per net here
(finished nets are skipped) and per epoch in the engine.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod
from . import data as data_mod
from . import competition, distributed, engine, fileio, logs, pseudo, runs, stacked
from .config import Config
from .errors import UserError
from .folds import make_folds, stratified_subset
from .metrics import classification_metrics, mcnemar
from .submission import make_submission, write_submission

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    submission: Path | None
    metrics: dict


@dataclass(frozen=True)
class Split:
    """A run's rows and folds: `rows` index train.csv; fold_of[i] is the fold that holds row i out under
    the run's fold seed; member_fold_of[j] is member j's own (the run's unless it sets fold_seed)."""

    rows: np.ndarray
    fold_of: np.ndarray
    member_fold_of: np.ndarray  # (members, rows)


def make_split(cfg: Config, labels: np.ndarray) -> Split:
    """`labels` are all of train.csv's; the split's rows a stratified subset (limit) of them."""
    rows = stratified_subset(labels, cfg.limit, cfg.seed)
    folds_by_seed: dict[int, np.ndarray] = {}

    def folds(seed: int) -> np.ndarray:
        if seed not in folds_by_seed:
            folds_by_seed[seed] = make_folds(labels[rows], cfg.folds, seed)
        return folds_by_seed[seed]

    members = config_mod.member_configs(cfg)
    return Split(rows, folds(cfg.split_seed), np.stack([folds(m.split_seed) for m in members]))


def _prepare_run(cfg: Config, dataset: data_mod.Dataset) -> tuple[Path, Split]:
    """The run folder (a resumed one when the same training was interrupted), locked by this process
    (runs.lock), with its config, data record and folds written."""
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
    # config.yaml last: a folder killed before it is no run at all (runs.list_runs ignores it)
    fileio.write_text(run_dir / "config.yaml", cfg.to_yaml())
    log.info(f"run folder: {run_dir}")
    return run_dir, split


def read_split(run_dir: Path, members: int) -> Split:
    """The run's folds.npz, for a run of `members` ensemble members."""
    saved = np.load(run_dir / "folds.npz")
    if "member_fold_of" in saved:
        return Split(saved["rows"], saved["fold_of"], saved["member_fold_of"])
    # runs from before bagged folds kept one fold_of, which every member shared
    return Split(saved["rows"], saved["fold_of"], np.repeat(saved["fold_of"][None], members, axis=0))


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


# a student's seed is its teacher's plus this times its round, so no two nets of a run start alike
STUDENT_SEED_STEP = 1_000_003


@dataclass(frozen=True)
class Unit:
    """One net of a run: ensemble member `member` trained on its fold `fold`'s training rows, or on all
    rows (fold None: the refit); round r >= 1 is a pseudo-labelled student (pseudo.py)."""

    fold: int | None
    member: int
    round: int = 0

    def label(self, n_members: int) -> str:
        where = f"fold {self.fold}" if self.fold is not None else "refit"
        where = f"{where} member {self.member}" if n_members > 1 else where
        return f"{where} student {self.round}" if self.round else where

    def seed(self, member: Config, folds: int) -> int:
        # the refit counts as fold number `folds`, so its nets start apart from every CV net
        return member.seed * 1000 + (self.fold if self.fold is not None else folds) + STUDENT_SEED_STEP * self.round

    def dir(self, run_dir: Path) -> Path:
        return runs.unit_dir(run_dir, self.fold, self.member, self.round)

    def config(self, members: list[Config], cfg: Config) -> Config:
        """The settings this net trains with: its member's, a student's epochs pseudo_epochs when set."""
        member = members[self.member]
        if self.round and cfg.pseudo_epochs is not None:
            return dataclasses.replace(member, epochs=cfg.pseudo_epochs)
        return member

    def is_done(self, run_dir: Path) -> bool:
        return (self.dir(run_dir) / "done.json").is_file()

    def held_out(self, split: Split) -> np.ndarray:
        """The mask of the rows this net never trains on (none for the refit)."""
        if self.fold is None:
            return np.zeros(len(split.rows), dtype=bool)
        return split.member_fold_of[self.member] == self.fold


def folds_to_train(cfg: Config) -> list[int]:
    return [cfg.fold] if cfg.fold is not None else list(range(cfg.folds))


def units_to_train(cfg: Config, folds: list[int] | None = None, refit: bool | None = None) -> list[Unit]:
    """Every member on every fold to train (or on `folds`), round after round (pseudo_rounds), then
    (refit: true) every member of the last round on all rows."""
    members = range(len(config_mod.member_configs(cfg)))
    folds = folds_to_train(cfg) if folds is None else folds
    cv = [Unit(k, j, r) for r in range(cfg.pseudo_rounds + 1) for k in folds for j in members]
    refit = cfg.refit if refit is None else refit
    return cv + ([Unit(None, j, cfg.pseudo_rounds) for j in members] if refit else [])


def teachers_of(student: Unit, units: list[Unit], split: Split) -> list[Unit]:
    """The nets that label a student's test rows: the previous round's CV nets among `units` that never
    trained on a row the student holds out (pseudo.may_teach)."""
    if student.round == 0:
        return []
    held_out = student.held_out(split)
    return [u for u in units if u.round == student.round - 1 and u.fold is not None
            and pseudo.may_teach(~u.held_out(split), held_out)]


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


def _save_unit(unit_dir: Path, history: list[dict], seconds: float, nets_per_step: int) -> None:
    """A trained net's history, then done.json (the net is finished: its weights and predictions are
    written by then; seconds: its share of the time of the nets it stepped with), and its resume point is no
    longer needed."""
    fileio.write_json(unit_dir / "history.json", history)
    fileio.write_json(unit_dir / "done.json", {"seconds": seconds, "epochs": len(history), "nets_per_step": nets_per_step})
    (unit_dir / "resume.pt").unlink(missing_ok=True)


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
    engine.use_host_settings(cfg)
    ranks = distributed.launched()
    # the processes that share each net's batch, recorded in config.yaml: the LR rule and the resume check see it
    cfg = dataclasses.replace(cfg, world_size=ranks.world if cfg.parallel == "data" else 1)
    # device=auto is decided once (a GPU this torch cannot run on means the CPU), then each rank takes its GPU;
    # settings, then data, are checked before anything is written
    kind = engine.select_device("auto").type if cfg.device == "auto" else cfg.device
    device = engine.preflight(cfg, distributed.device_for(kind, ranks, cfg.parallel))
    # recorded in config.yaml: what amp and nets_per_step=auto meant on this machine
    cfg = dataclasses.replace(cfg, precision=engine.precision(device, cfg.amp), nets_per_step=stacked.resolve(cfg, device))
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
        prepared = _prepare_run(cfg, dataset)
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

    def job(unit: Unit) -> stacked.Job:
        member = unit.config(members, cfg)
        data = _fold_data(tensors, split.member_fold_of[unit.member], unit.fold)
        if unit.round:
            selection = _student_selection(unit, units, split, run_dir, cfg, ranks, by_folds)
            log.info(f"{unit.label(len(members))}: learns from {selection.describe()}")
            data = pseudo.student_data(data, selection)
        return stacked.Job(member, data, unit.seed(member, cfg.folds), unit.label(len(members)), unit.dir(run_dir))

    for group in _groups(mine, job, cfg.nets_per_step, run_dir, ranks, by_folds, len(members)):
        started = time.perf_counter()
        if len(group) == 1:  # one net per step: engine.train_net, also for data-parallel ranks
            one = group[0][1]
            outs = [engine.train_net(one.cfg, one.data, one.seed, one.label, one.unit_dir, device,
                                     ranks=distributed.ALONE if by_folds else ranks)]
        else:
            outs = stacked.train_group([one for _, one in group], device)
        if not (by_folds or ranks.is_main):
            continue  # a data-parallel net's files are rank 0's to write
        seconds = (time.perf_counter() - started) / len(group)  # a stacked net's share of its group's time
        for (unit, one), out in zip(group, outs):
            _save_unit(one.unit_dir, out.history, seconds, len(group))
            if unit.fold is not None:
                log.info(f"{one.label}: val accuracy {_accuracy(out.val_probs, labels[unit.held_out(split)]):.4%} in {seconds:.0f}s")
            else:
                log.info(f"{one.label}: trained on all {len(labels)} rows in {seconds:.0f}s")
    if by_folds:  # every rank waits for the others' nets, so the final barrier waits only for finish()
        _wait_for(units, run_dir, announce=ranks.is_main)
    if not ranks.is_main:
        return RunResult(run_dir, None, {})
    return finish(run_dir, cfg, labels, split, demo=dataset.demo)


def _groups(units: list[Unit], job, nets_per_step: int, run_dir: Path, ranks: distributed.Ranks, by_folds: bool,
            n_members: int):
    """This process's unfinished nets as (unit, stacked.Job) groups that train together, round after round: a
    round's students are chosen (job()) once the previous round is trained. One net per step makes each job
    just before it trains (a student's data is the size of the training set)."""
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


def _quiet(_: str) -> None:
    pass


def _wait_for(units: list[Unit], run_dir: Path, announce: bool, poll_s: float = 2.0) -> None:
    """A rank of a fold-parallel run, its own nets done, waits for the other ranks' nets. A rank that
    dies makes torchrun stop this one too, so the wait cannot outlive the job."""
    waiting = [u for u in units if not u.is_done(run_dir)]
    if waiting and announce:
        log.info(f"waiting for {len(waiting)} net(s) of the other ranks")
    while waiting:
        time.sleep(poll_s)
        waiting = [u for u in waiting if not u.is_done(run_dir)]


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def _member_oof(probs_root: Path, split: Split, done: list[int], n_members: int, round_: int) -> np.ndarray:
    """(members, rows, 10): each row's prediction by each member's net that held it out (NaN where none did)."""
    member_oof = np.full((n_members, len(split.rows), 10), np.nan, dtype=np.float32)
    for k in done:
        for j in range(n_members):
            unit = Unit(k, j, round_)
            member_oof[j, unit.held_out(split)] = np.load(unit.dir(probs_root) / "val_probs.npy")
    return member_oof


def _pseudo_record(run_dir: Path, probs_root: Path, units: list[Unit], n_members: int) -> list[dict]:
    """Per student: its teachers, how many test rows it learnt from, and how often its own test labels
    differ from its teachers' (pseudo.npz against its test_probs.npy)."""
    record = []
    for unit in units:
        selection, teachers = pseudo.load(unit.dir(run_dir) / "pseudo.npz")
        record.append({"net": unit.label(n_members), "round": unit.round, "teacher_nets": teachers,
                       **pseudo.agreement(np.load(unit.dir(probs_root) / "test_probs.npy"), selection)})
    return record


def finish(run_dir: Path, cfg: Config, labels: np.ndarray, split: Split, demo: bool,
           prediction: Path | None = None) -> RunResult:
    """From the finished nets' probabilities: OOF probabilities (each row the average of the last round's
    members, each from the net that held the row out), metrics.json, and the submission (the refit
    members' average when the refit is finished, else the average of every fold's members). With
    pseudo-labels the metrics also hold every round's OOF and the paired test of the last round against
    the first. `prediction`: a `make predict` folder inside the run, where the nets' probabilities were
    written and the run's outputs go (default: the run's own, as training wrote them)."""
    probs_root = prediction or run_dir
    n_members = len(config_mod.member_configs(cfg))
    last = cfg.pseudo_rounds
    done = [k for k in range(cfg.folds) if all(Unit(k, j, last).is_done(run_dir) for j in range(n_members))]
    if not done:
        raise UserError(f"{run_dir}: no finished fold to build a submission from")
    member_oof = _member_oof(probs_root, split, done, n_members, last)
    oof = member_oof.mean(0)
    covered = np.isfinite(oof).all(1)  # rows every member has held out in a finished fold
    # the ensemble's OOF on the rows of the run's fold k; with bagged folds (a member's own fold_seed) no net
    # held out exactly those rows, so each net's own accuracy on the rows it held out is reported too
    per_fold = {str(k): _accuracy(oof[covered & (split.fold_of == k)], labels[covered & (split.fold_of == k)])
                for k in done}
    per_net = [{str(k): _accuracy(member_oof[j][Unit(k, j).held_out(split)], labels[Unit(k, j).held_out(split)])
                for k in done} for j in range(n_members)]
    metrics = {"folds_done": done, "folds_total": cfg.folds, "fold_accuracy": per_fold, "net_accuracy": per_net,
               "oof": classification_metrics(labels[covered], oof[covered]), "demo_data": demo}
    if n_members > 1:  # each member alone, and the ensemble as members are added in order
        metrics["members"] = [
            {"settings": cfg.members[j], "oof_accuracy": _accuracy(member_oof[j][covered], labels[covered]),
             "ensemble_of_first_oof_accuracy": _accuracy(member_oof[: j + 1].mean(0)[covered], labels[covered])}
            for j in range(n_members)]
    if last:
        teachers = _member_oof(probs_root, split, done, n_members, 0).mean(0)[covered]
        metrics["rounds"] = [{"round": r, "oof_accuracy": _accuracy(
            _member_oof(probs_root, split, done, n_members, r).mean(0)[covered], labels[covered])} for r in range(last + 1)]
        metrics["students_vs_teachers"] = mcnemar(labels[covered], teachers, oof[covered])
        students = [u for u in units_to_train(cfg, folds=done) if u.round and u.is_done(run_dir)]
        metrics["pseudo"] = _pseudo_record(run_dir, probs_root, students, n_members)

    cv_test = np.stack([np.load(Unit(k, j, last).dir(probs_root) / "test_probs.npy")
                        for k in done for j in range(n_members)])
    refit_units = [Unit(None, j, last) for j in range(n_members)]
    refit_done = cfg.refit and all(u.is_done(run_dir) for u in refit_units)
    test = np.stack([np.load(u.dir(probs_root) / "test_probs.npy") for u in refit_units]) if refit_done else cv_test
    metrics["submission_from"] = f"refit: {n_members} net(s) on all rows" if refit_done else \
        f"cv: {len(cv_test)} fold net(s)"
    if refit_done:  # how often the refit ensemble and the CV fold ensemble pick the same test label
        metrics["refit_agrees_with_cv"] = float((test.mean(0).argmax(1) == cv_test.mean(0).argmax(1)).mean())
    fileio.write_npy(probs_root / "member_oof_probs.npy", member_oof)
    fileio.write_npy(probs_root / "oof_probs.npy", oof)
    fileio.write_npy(probs_root / "test_probs.npy", test)

    submissions = runs.submissions_root(cfg)
    name = run_dir.name + (f".{prediction.name}" if prediction else "")
    sub_path = submissions / f"{name}{'.DEMO' if demo else ''}.csv"
    sha = write_submission(make_submission(test), sub_path, expected_rows=test.shape[1])
    fileio.write_json(sub_path.with_suffix(".json"), {
        "run": str(run_dir), "prediction": str(prediction) if prediction else None, "tta": config_mod.nets_tta(cfg),
        "created": _now(), "demo_data": demo, "folds": done, "oof_accuracy": metrics["oof"]["accuracy"],
        "submission_from": metrics["submission_from"], "sha256": sha})
    working = competition.kaggle_working()
    if working is not None:  # a Kaggle kernel's output is /kaggle/working/submission.csv
        fileio.write_bytes(working / "submission.csv", sub_path.read_bytes())
    metrics["submission"] = str(sub_path)
    fileio.write_json(probs_root / "metrics.json", metrics)
    oof_acc = metrics["oof"]["accuracy"]
    for j, member in enumerate(metrics.get("members", [])):
        log.info(f"member {j}: OOF {member['oof_accuracy']:.4%}; members 0..{j} averaged {member['ensemble_of_first_oof_accuracy']:.4%}")
    for r in metrics.get("rounds", []):
        log.info(f"round {r['round']} ({'teachers' if r['round'] == 0 else 'students'}): OOF {r['oof_accuracy']:.4%}")
    if last:
        paired = metrics["students_vs_teachers"]
        log.info(f"students vs teachers: {paired['b_errors']} against {paired['a_errors']} errors; "
                 f"{paired['only_b_right']} rows only the students got right, {paired['only_a_right']} only the "
                 f"teachers (McNemar p = {paired['p_value']:.3g})")
    log.info(f"OOF CV accuracy {oof_acc:.4%} over {metrics['oof']['rows']} rows ({len(done)}/{cfg.folds} folds"
             f"{f', {n_members} members' if n_members > 1 else ''}), log-loss {metrics['oof']['log_loss']:.4f}; "
             f"submission from the {metrics['submission_from']}")
    return RunResult(run_dir, sub_path, metrics)


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
    engine.use_host_settings(cfg)  # predict and evaluate run on the run's threads
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
        device = engine.select_device(cfg.device)
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


def _now() -> str:
    """A submission's creation time, as `make submit` orders them (UTC, ISO 8601, to the microsecond)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
