"""`make runs`: a table of the run folders under runs/, newest first: state, settings, progress, accuracy and time."""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import config as config_mod
from . import fileio, nets, runs, settings
from .competition import in_project
from .config import Config
from .errors import UserError

# config keys left out of a run's overrides: what the run records by itself (the precision amp meant, the
# processes, the data it found), what changes no net (config.NOT_TRAINING), its name (the config column), and
# the device and a time budget (columns of their own)
NOT_CHOICES = config_mod.NOT_TRAINING + ("world_size", "data", "name", "device", "budget")
STAMP = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")  # runs.new_run_dir's <name>-<timestamp>[-<n>]


@dataclass
class RunsSettings:
    csv: bool = False  # CSV=1: comma-separated values for a spreadsheet, in place of the aligned table


def command(args) -> None:
    items = settings.parse_items(args.overrides)
    options = settings.take(RunsSettings, items)
    if items:
        raise UserError(f"runs takes CSV=1, not {' '.join(f'{k}={v}' for k, v in items.items())}")
    root = in_project(args.runs_dir)
    frame = table(root)
    if frame.empty:
        print(f"no runs under {root}/ yet: run `make train` first")
    elif options.csv:
        print(frame.to_csv(index=False), end="")
    else:
        print(frame.astype(object).fillna("").to_string(index=False))


def table(root: Path) -> pd.DataFrame:
    """One row per folder under root, newest first. Reads config.yaml, data.json, metrics.json and the
    finished nets' done.json, and the resume point of one unfinished net; no weights, no predictions."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    bases: dict[str, Config] = {}
    frame = pd.DataFrame([_row(folder, bases) for folder in folders])
    if frame.empty:
        return frame
    frame = frame.astype({"errors": "Int64"})
    if frame["budget"].isna().all():  # a time budget is the exception: no empty column for every other run
        frame = frame.drop(columns="budget")
    return frame.sort_values(["started", "run"], ascending=False).reset_index(drop=True)


@dataclass
class Progress:
    """How far a run's nets got."""

    finished: int
    total: int
    epochs: str  # each net's epochs: "18", or "24, 40" when they differ
    seconds: float  # the finished nets' time, summed (done.json)
    where: str | None  # the unfinished net training or next, "fold 2 member 0 at epoch 7/18"; None: every net finished


def _row(run: Path, bases: dict[str, Config]) -> dict[str, Any]:
    problems: list[str] = []
    raw = _config_yaml(run, problems)
    cfg = _config(raw, problems) if raw is not None else None
    record = _json(run, "data.json", problems, needed=True)
    metrics = _json(run, "metrics.json", problems)
    row = {"run": run.name, "started": _started(run), "state": None, "config": None, "overrides": None,
           "nets": None, "epochs": None, "oof_%": None, "errors": None, "nets_min": None, "device": None,
           "precision": None, "submission": None, "demo": record.get("demo") if record else None,
           "budget": _budget(metrics, raw)}
    progress = None
    if cfg is not None:
        progress = _progress(run, cfg, problems)
        row.update(config=cfg.name, overrides=" ".join(_overrides(cfg, raw, bases)),
                   nets=f"{progress.finished} of {progress.total}", epochs=progress.epochs,
                   nets_min=round(progress.seconds / 60, 1),
                   device=cfg.device + (f" x{cfg.world_size}" if cfg.world_size > 1 else ""), precision=cfg.precision)
    if metrics is not None:
        row.update(_results(metrics, problems))
    row["state"] = _state(run, metrics is not None, raw is not None, progress, problems)
    return row


def _state(run: Path, complete: bool, has_config: bool, progress: Progress | None, problems: list[str]) -> str:
    locked = runs.is_locked(run)
    if locked and not has_config:
        return "training now: starting"  # config.yaml is the last file a new run folder gets
    if problems:
        return "damaged: " + "; ".join(problems)
    if complete:
        return "complete (in use now: make predict)" if locked else "complete"
    where = progress.where or "every net finished, no metrics.json yet"
    return f"{'training now' if locked else 'interrupted'}: {where}"


def _json(run: Path, name: str | Path, problems: list[str], needed: bool = False) -> dict | None:
    """A small JSON object of the run, or None when the file is absent or (noted in problems) unreadable or
    not an object; the absence of a `needed` file is noted too."""
    path = run / name
    if not path.is_file():
        if needed:
            problems.append(f"no {name}")
        return None
    try:
        value = fileio.read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        problems.append(f"{name} unreadable")
        return None
    return value


def _config_yaml(run: Path, problems: list[str]) -> dict | None:
    path = run / "config.yaml"
    if not path.is_file():
        problems.append("no config.yaml")
        return None
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        problems.append("config.yaml unreadable")
        return None
    return raw


def _config(raw: dict, problems: list[str]) -> Config | None:
    """The run's settings; keys this version does not know (a newer version's) are left to the overrides."""
    try:
        return config_mod.validate(config_mod.apply({k: v for k, v in raw.items() if k in config_mod.KEYS},
                                                    Config(), "config.yaml"))
    except UserError as e:
        problems.append(str(e))
        return None


def _overrides(cfg: Config, raw: dict, bases: dict[str, Config]) -> list[str]:
    """The run's training choices that differ from configs/<its name>.yaml of the project, or from the
    defaults when there is no such file, as key=value."""
    if cfg.name not in bases:
        path = in_project("configs") / f"{cfg.name}.yaml"
        bases[cfg.name] = config_mod.load(path) if path.is_file() else Config()
    chosen, base = cfg.to_dict(), bases[cfg.name].to_dict()
    known = [f"{k}={_text(chosen[k])}" for k in config_mod.KEYS if k not in NOT_CHOICES and chosen[k] != base[k]]
    return known + [f"{k}={_text(v)}" for k, v in raw.items() if k not in config_mod.KEYS + list(NOT_CHOICES)]


def _text(value: Any) -> str:
    """A setting's value as a config file writes it: 0.003, null, true, [{model: gn_m5}]."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _progress(run: Path, cfg: Config, problems: list[str]) -> Progress:
    members = config_mod.member_configs(cfg)
    units = nets.units_to_train(cfg)
    epochs = {unit: unit.config(members, cfg).epochs for unit in units}
    finished = [unit for unit in units if unit.is_done(run)]
    seconds = 0.0
    for unit in finished:
        # every epoch over all the net's sittings, and its last sitting's set-up and prediction
        done = _json(run, unit.dir(run).relative_to(run) / "done.json", problems) or {}
        seconds += done["seconds"] if isinstance(done.get("seconds"), (int, float)) else 0.0
    unfinished = [unit for unit in units if unit not in finished]
    where = None
    if unfinished:
        started = [unit for unit in unfinished if (unit.dir(run) / "resume.pt").is_file()]
        unit = (started or unfinished)[0]
        epoch = _resume_epoch(run, unit, epochs[unit], problems) if started else 0
        where = f"{unit.label(len(members))} at epoch {epoch}/{epochs[unit]}"
        if len(started) > 1:  # nets stepped together, or trained side by side under torchrun
            where += f" (and {len(started) - 1} more net(s) started)"
    return Progress(len(finished), len(units), ", ".join(str(e) for e in dict.fromkeys(epochs.values())),
                    seconds, where)


def _resume_epoch(run: Path, unit: nets.Unit, total: int, problems: list[str]) -> int:
    """The epochs an unfinished net has finished, from its resume point. There is no smaller record of it, so
    this loads a checkpoint (a few MB): for one net per run only."""
    path = unit.dir(run) / "resume.pt"
    try:
        return int(fileio.read_torch(path)["epoch"])
    except (UserError, KeyError, TypeError, ValueError):
        if not path.exists():  # the net finished while the table was read
            return total
        problems.append(f"{path.relative_to(run)} unreadable")
        return 0


def _results(metrics: dict, problems: list[str]) -> dict[str, Any]:
    """OOF accuracy (%), errors and the submission's file name, from metrics.json."""
    oof = metrics.get("oof")
    try:
        accuracy, errors = float(oof["accuracy"]), int(oof["errors"])
    except (KeyError, TypeError, ValueError):
        problems.append("metrics.json has no OOF accuracy")
        return {}
    submission = metrics.get("submission")
    return {"oof_%": round(100 * accuracy, 3), "errors": errors,
            "submission": Path(submission).name if isinstance(submission, str) else None}


def _budget(metrics: dict | None, raw: dict | None) -> str | None:
    """A time-budgeted run's BUDGET (config.yaml), and once it is complete how much of it the run took and which
    members it shed (metrics.json's budget entry: budget.outcome); None for any other run."""
    entry = metrics.get("budget") if metrics else None
    if not (isinstance(entry, dict) and entry.get("budget") is not None):
        return _text(raw["budget"]) if raw and raw.get("budget") is not None else None
    text, used, shed = str(entry["budget"]), entry.get("wall_fraction_of_budget"), entry.get("shed")
    if isinstance(used, (int, float)):
        text += f", {used:.0%} used"
    if isinstance(shed, dict) and shed:
        text += f", shed {' '.join(shed)}"
    return text


def _started(run: Path) -> datetime.datetime:
    """When the run began: the timestamp in its name, else when its data.json was written (once, as the
    folder was made; config.yaml is written again by a resume), else the folder's own time."""
    match = STAMP.search(run.name)
    if match:
        try:
            return datetime.datetime.strptime(match[1], "%Y%m%d-%H%M%S")
        except ValueError:
            pass
    made = run / "data.json" if (run / "data.json").is_file() else run
    return datetime.datetime.fromtimestamp(made.stat().st_mtime).replace(microsecond=0)
