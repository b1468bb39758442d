"""Run folders: one per run under runs/, named <name>-<timestamp>, never written over by another run.

A run folder holds:
  config.yaml          the resolved config
  plan.json            a budgeted run's plan (budget.py); shed-<m<j>|refit>.json: what it shed for time
  data.json            where the data came from, its content hash, whether it is the demo set
  folds.npz            rows (indices into train.csv), fold_of (the fold each row is held out in) and
                       member_fold_of (members, rows): each member's own folds (they differ with fold_seed)
  fold<k>/m<j>/        ensemble member j trained on fold k: resume.pt while training; then weights.pt,
                       val_probs.npy, test_probs.npy, history.json and done.json (written last: done)
  refit/m<j>/          member j trained on all rows (refit: true); val_probs.npy is empty
  pl<r>/fold<k>/m<j>/  round r's pseudo-labelled student of member j on fold k (pseudo_rounds >= r); with
  pl<r>/refit/m<j>/    pseudo-labels the refit is the last round's: it learns from the CV nets' labels
  member_oof_probs.npy (members, rows, 10) out-of-fold probabilities of each member (the last round's)
  oof_probs.npy        (rows, 10) their average (NaN where the fold was not trained)
  test_probs.npy       (nets, test rows, 10): the nets the submission averages (refit or fold members)
  metrics.json         CV metrics; written when the run is complete
  predict-<settings>/  `make predict` with its prediction settings (tta0, tta1, tta-per-member): the same
                       files as the nets' and the run's predictions above, and its own config.yaml and
                       metrics.json; what training wrote is never rewritten. `make evaluate` and
                       `make compare` take it in place of a run (run_of)
  .lock                held (flock) by the process training or predicting in the folder; its PID inside
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from . import config as config_mod
from .competition import in_project
from .config import Config
from .errors import UserError

log = logging.getLogger(__name__)


def runs_root(cfg: Config) -> Path:
    return in_project(cfg.runs_dir)


def submissions_root(cfg: Config) -> Path:
    return in_project(cfg.submissions_dir)


def new_run_dir(cfg: Config) -> Path:
    root = runs_root(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / f"{cfg.name}-{stamp}"
    suffix = 1
    while run.exists():
        suffix += 1
        run = root / f"{cfg.name}-{stamp}-{suffix}"
    run.mkdir(parents=True)
    return run


def unit_dir(run_dir: Path, fold: int | None, member: int, round_: int = 0) -> Path:
    """Where one net of a run lives: fold<k>/m<j>, or refit/m<j> for a net trained on all rows; a
    pseudo-labelled student of round r under pl<r>/."""
    top = run_dir / f"pl{round_}" if round_ else run_dir
    return top / (f"fold{fold}" if fold is not None else "refit") / f"m{member}"


def is_complete(run: Path) -> bool:
    return (run / "metrics.json").is_file()


def list_runs(root: Path) -> list[Path]:
    """Run folders, oldest first (by the time their config was written)."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda p: ((p / "config.yaml").stat().st_mtime_ns, p.name))


def find_resumable(cfg: Config) -> Path | None:
    """The newest unfinished run of the same name that trains the same models: rerunning the same
    command after a crash or Ctrl-C continues it instead of starting over. When the newest unfinished
    run of the name was trained with other settings, says which, since a new run starts instead."""
    told = False
    for run in reversed(list_runs(runs_root(cfg))):
        if not run.name.startswith(f"{cfg.name}-") or is_complete(run):
            continue
        if not ((run / "folds.npz").is_file() and (run / "data.json").is_file()):
            continue  # killed while being created
        try:
            saved = config_mod.load(run / "config.yaml")
        except UserError:
            continue
        # a budgeted run resumes the plan it made, whatever a new plan would be
        differences = config_mod.training_differences(saved, cfg, config_mod.PLANNED if cfg.budget else ())
        if not differences:
            return run
        if not told:
            log.info(f"not resuming {run}: it trains with other settings ({'; '.join(differences[:4])})")
            told = True
    return None


# ---------------------------------------------------------------- one process per run folder


LOCK = ".lock"
_held: dict[Path, object] = {}


def lock(run_dir: Path) -> None:
    """Hold run_dir for this process until unlock (or exit): an OS file lock (flock) on run_dir/.lock, so a
    second `make train` or `make predict` of the same run stops instead of writing over this one, and a
    crashed holder frees it with its death. The lock file is the one file not written through fileio: a
    lock needs the same inode for every process, which an atomic rename would replace."""
    import fcntl

    path = run_dir / LOCK
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{run_dir}: another process (PID {holder}) is using this run folder; wait for it to "
                        f"finish, or train under another NAME=") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[run_dir.resolve()] = handle


def unlock(run_dir: Path) -> None:
    handle = _held.pop(run_dir.resolve(), None)
    if handle is not None:
        handle.close()  # closing the file lets the flock go


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds run_dir (lock), this one included: a non-blocking shared flock tried on a
    handle of its own (flock locks belong to an open file, so this process's own lock counts as another's)
    and let go at once. It creates no lock file and never waits; a holder keeps its lock. A `make train`
    taking the lock in the very instant of the probe would find the folder in use and stop with that message."""
    import fcntl

    try:
        handle = open(run_dir / LOCK, "rb")
    except FileNotFoundError:
        return False
    with handle:  # closing the file lets the probe's own lock go
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


PREDICTION = "predict-"  # the prefix of a `make predict` folder inside a run


def prediction_dir(run_dir: Path, tta: bool | None) -> Path:
    """Where `make predict` writes, by its prediction settings: predict-tta0/, predict-tta1/, or
    predict-tta-per-member/ for a run whose members predict some with TTA and some without."""
    return run_dir / f"{PREDICTION}tta{'-per-member' if tta is None else int(tta)}"


def run_of(folder: Path) -> Path:
    """The run a folder of predictions belongs to: a run folder is its own; a `make predict` folder
    (predict-*/, which holds the same prediction files and metrics.json) belongs to the run around it."""
    is_prediction = folder.name.startswith(PREDICTION) and (folder.parent / "data.json").is_file()
    return folder.parent if is_prediction else folder


def resolve_run(run: str | None, runs_dir: str = "runs") -> Path:
    """RUN=<name or path>: a run folder, or a `make predict` folder inside one (run_of tells which run it
    belongs to); the newest run when not given."""
    root = in_project(runs_dir)
    if run:
        for candidate in (Path(run), root / run):
            if (candidate / "config.yaml").is_file() and (run_of(candidate) / "data.json").is_file():
                return candidate
        raise UserError(f"RUN={run}: no run folder with a config.yaml and data.json (runs are under {root}/)")
    runs = list_runs(root)
    if not runs:
        raise UserError(f"no runs under {root}/ yet: run `make train` first")
    return runs[-1]
