"""A run's nets and the rows they hold out: the split (the rows of train.csv the run uses and each member's
folds, saved as folds.npz), and every net the run trains (each member on each fold, round after round of
pseudo-labelled students, then the refit) with its seed, settings, folder and held-out rows; which nets may
teach a student.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import config as config_mod
from . import pseudo, runs
from .config import Config
from .folds import make_folds, stratified_subset


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



def read_split(run_dir: Path, members: int) -> Split:
    """The run's folds.npz, for a run of `members` ensemble members."""
    saved = np.load(run_dir / "folds.npz")
    if "member_fold_of" in saved:
        return Split(saved["rows"], saved["fold_of"], saved["member_fold_of"])
    # runs from before bagged folds kept one fold_of, which every member shared
    return Split(saved["rows"], saved["fold_of"], np.repeat(saved["fold_of"][None], members, axis=0))


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
    (refit: true) every member of the last round on all rows. A budgeted run trains member after member, all
    folds of each, so a member it sheds for time (budget.Pace) is one it has not started."""
    members = range(len(config_mod.member_configs(cfg)))
    folds = folds_to_train(cfg) if folds is None else folds
    if cfg.budget:
        cv = [Unit(k, j) for j in members for k in folds]  # a budget plans no pseudo-label rounds
    else:
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
