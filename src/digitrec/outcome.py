"""The run's outcome, from its finished nets' probabilities: the OOF probabilities and metrics.json, and the
submission (the refit members' average, else every fold's members') with its sidecar; what `make train` and
`make predict` end with.
"""
from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import competition, fileio, pseudo, runs
from .config import Config
from .errors import UserError
from .metrics import classification_metrics, mcnemar
from .nets import Split, Unit, units_to_train
from .submission import make_submission, write_submission

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run ends with; on a rank other than 0 of a torchrun job, no submission and no metrics."""

    run_dir: Path
    submission: Path | None
    metrics: dict


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
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
           prediction: Path | None = None, budget: dict | None = None) -> RunResult:
    """From the finished nets' probabilities: OOF probabilities (each row the average of the last round's
    members, each from the net that held the row out), metrics.json, and the submission (the refit
    members' average when the refit is finished, else the average of every fold's members). With
    pseudo-labels the metrics also hold every round's OOF and the paired test of the last round against
    the first. `prediction`: a `make predict` folder inside the run, where the nets' probabilities were
    written and the run's outputs go (default: the run's own, as training wrote them). `budget`: a budgeted
    run's plan against what it did (budget.outcome), kept in metrics.json."""
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
    per_fold = {str(k): accuracy(oof[covered & (split.fold_of == k)], labels[covered & (split.fold_of == k)])
                for k in done}
    per_net = [{str(k): accuracy(member_oof[j][Unit(k, j).held_out(split)], labels[Unit(k, j).held_out(split)])
                for k in done} for j in range(n_members)]
    metrics = {"folds_done": done, "folds_total": cfg.folds, "fold_accuracy": per_fold, "net_accuracy": per_net,
               "oof": classification_metrics(labels[covered], oof[covered]), "demo_data": demo}
    if n_members > 1:  # each member alone, and the ensemble as members are added in order
        metrics["members"] = [
            {"settings": cfg.members[j], "oof_accuracy": accuracy(member_oof[j][covered], labels[covered]),
             "ensemble_of_first_oof_accuracy": accuracy(member_oof[: j + 1].mean(0)[covered], labels[covered])}
            for j in range(n_members)]
    if last:
        teachers = _member_oof(probs_root, split, done, n_members, 0).mean(0)[covered]
        metrics["rounds"] = [{"round": r, "oof_accuracy": accuracy(
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
    if budget is not None:
        metrics["budget"] = budget
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


def _now() -> str:
    """A submission's creation time, as `make submit` orders them (UTC, ISO 8601, to the microsecond)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
