"""`digitrec <command> [options] [KEY=VALUE ...]` (or `python -m digitrec`): the only place errors become exit codes.

Settings are config keys or their short names (BS, ACCUM, EPOCHS, FOLDS, FOLD, SEED, DATA, NAME,
LIMIT, MODEL), given as KEY=VALUE after the command; the Makefile passes its variables this way.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from . import logs, settings
from .competition import in_project
from .errors import UserError

DEFAULT_CONFIG = "configs/default.yaml"  # the project's, wherever the command is run from


def _config(args: argparse.Namespace):
    from . import config

    return config.load(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from . import commands, distributed, evaluation, hardware, pipeline

    cfg = _config(args)
    hardware.use_host_settings(cfg)  # before the demo set's torch ops start torch's threads (pipeline.train repeats it)
    # under torchrun only rank 0 downloads or writes the demo set; the others read it after the barrier
    cfg = commands.with_data(cfg, fetch=distributed.launched().is_main)
    result = pipeline.train(cfg)
    if result.submission is not None:  # under torchrun, rank 0's
        evaluation.curves_after_training(result.run_dir)
        print(f"submission: {result.submission}")


@dataclass
class PredictSettings:
    tta: bool | None = None  # TTA=1/0 (on/off, true/false, ...), the same as --tta / --no-tta


def cmd_predict(args: argparse.Namespace) -> None:
    from . import pipeline

    items = settings.parse_items(args.overrides)
    tta = settings.take(PredictSettings, items).tta
    if items:
        raise UserError(f"predict takes RUN=<run> and TTA=1|0, not {' '.join(f'{k}={v}' for k, v in items.items())}")
    if tta is not None and args.tta is not None and tta != args.tta:
        raise UserError(f"TTA={int(tta)} and --{'' if args.tta else 'no-'}tta disagree; give one of them")
    result = pipeline.predict(args.run, args.runs_dir, tta=args.tta if tta is None else tta)
    print(f"submission: {result.submission}")


def _take_run(args: argparse.Namespace) -> None:
    """RUN=<run> among a command's KEY=VALUE settings is its --run <run>, the form the README and Make use."""
    rest = []
    for item in args.overrides:
        key, has_value, value = item.partition("=")
        if has_value and settings.normalize(key) == "run":
            if args.run is not None and args.run != value:
                raise UserError(f"RUN={value} and --run {args.run} disagree; give one of them")
            args.run = value
        else:
            rest.append(item)
    args.overrides = rest


# name -> (module, function, help, the options it takes). Each function takes the parsed args; modules are
# imported only when their command runs (`import kaggle`, which authenticates, only inside kaggle_client's calls).
COMMANDS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "train": ("cli", "cmd_train", "train the config over stratified folds and write a submission",
              ("config", "settings")),
    "predict": ("cli", "cmd_predict", "predict again from a run's saved weights, into its own folder and submission",
                ("run", "runs_dir", "tta", "settings")),
    "evaluate": ("evaluation", "command", "accuracy, per-class errors and model cost of a run",
                 ("run", "runs_dir", "settings")),
    "compare": ("evaluation", "compare_command", "McNemar's paired test of two runs' out-of-fold predictions (A= B=)",
                ("runs_dir", "settings")),
    "runs": ("runtable", "command", "a table of the runs under runs/, newest first (CSV=1 for CSV)",
             ("runs_dir", "settings")),
    "sweep": ("studies", "command", "batch-size, accumulation and norm studies (STUDY=batch|accum|norm)",
              ("config", "settings")),
    "bench": ("bench", "command", "training/inference/data throughput against the conventional path",
              ("config", "settings")),
    "download": ("commands", "cmd_download", "download the competition data into input/", ()),
    "submit": ("commands", "cmd_submit", "validate and upload a submission (DRY_RUN=1 to only show)",
               ("config", "settings")),
    "scores": ("commands", "cmd_scores", "list this account's submissions and scores", ("config",)),
    "kernel": ("commands", "cmd_kernel", "build kernel/: a Kaggle kernel that runs this pipeline (ACCEL=)",
               ("config", "settings")),
    "kernel-push": ("commands", "cmd_kernel_push", "push kernel/ to Kaggle", ()),
    "kernel-output": ("commands", "cmd_kernel_output", "fetch the kernel's output (its submission)", ()),
}


def _add_option(parser: argparse.ArgumentParser, option: str) -> None:
    if option == "config":
        parser.add_argument("--config", default=str(in_project(DEFAULT_CONFIG)), help="YAML config (default: %(default)s)")
    elif option == "run":
        parser.add_argument("--run", default=None, help="a run folder or name under runs/, or RUN=... among the "
                            "settings (default: the newest run)")
    elif option == "runs_dir":
        parser.add_argument("--runs-dir", default="runs", help="where runs live, in the project (default: %(default)s)")
    elif option == "tta":
        parser.add_argument("--tta", default=None, action=argparse.BooleanOptionalAction,
                            help="test-time augmentation (default: as the run was trained)")
    elif option == "settings":
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="settings, e.g. BS=128 ACCUM=8 (train), STUDY=batch (sweep) or RUN=... TTA=0 (predict)")


def build_parser(prog: str = "python -m digitrec") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        for option in options:
            _add_option(p, option)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m digitrec") -> int:
    args = build_parser(prog).parse_args(argv)
    logs.setup()
    module, function, _, options = COMMANDS[args.command]
    try:
        if "run" in options and "settings" in options:
            _take_run(args)
        getattr(importlib.import_module(f"digitrec.{module}"), function)(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\ninterrupted: finished folds and the last finished epoch are saved; run the same command "
              "again to resume", file=sys.stderr)
        return 130
    return 0


def entry_point() -> int:
    """The `digitrec` console command that pyproject.toml declares."""
    return main(prog="digitrec")
