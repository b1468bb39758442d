"""`python -m digitrec <command> [options] [KEY=VALUE ...]`: the only place errors become exit codes.

Settings are config keys or their short names (BS, ACCUM, EPOCHS, FOLDS, FOLD, SEED, DATA, NAME,
LIMIT, MODEL), given as KEY=VALUE after the command; the Makefile passes its variables this way.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import logs
from .competition import in_project
from .errors import UserError

DEFAULT_CONFIG = "configs/default.yaml"  # the project's, wherever the command is run from


def _config(args: argparse.Namespace):
    from . import config

    return config.load(args.config, args.overrides)


def cmd_train(args: argparse.Namespace) -> None:
    from . import commands, distributed, engine, pipeline

    cfg = _config(args)
    engine.use_host_settings(cfg)  # before the demo set's torch ops start torch's threads (pipeline.train repeats it)
    # under torchrun only rank 0 downloads or writes the demo set; the others read it after the barrier
    cfg = commands.with_data(cfg, fetch=distributed.launched().is_main)
    result = pipeline.train(cfg)
    if result.submission is not None:  # under torchrun, rank 0's
        print(f"submission: {result.submission}")


def cmd_predict(args: argparse.Namespace) -> None:
    from . import pipeline

    result = pipeline.predict(args.run, args.runs_dir, tta=args.tta)
    print(f"submission: {result.submission}")


# name -> (module, function, help). Each function takes the parsed args; modules are imported only
# when their command runs (`import kaggle`, which authenticates, only inside kaggle_client's calls).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("cli", "cmd_train", "train the config over stratified folds and write a submission"),
    "predict": ("cli", "cmd_predict", "rebuild a run's submission from its saved weights"),
    "evaluate": ("evaluation", "command", "accuracy, per-class errors and model cost of a run"),
    "compare": ("evaluation", "compare_command", "McNemar's paired test of two runs' out-of-fold predictions (A= B=)"),
    "sweep": ("studies", "command", "batch-size and accumulation studies (STUDY=batch|accum)"),
    "bench": ("bench", "command", "training/inference/data throughput against the conventional path"),
    "download": ("commands", "cmd_download", "download the competition data into input/"),
    "submit": ("commands", "cmd_submit", "validate and upload a submission (DRY_RUN=1 to only show)"),
    "scores": ("commands", "cmd_scores", "list this account's submissions and scores"),
    "kernel": ("commands", "cmd_kernel", "build kernel/: a Kaggle kernel that runs this pipeline"),
    "kernel-push": ("commands", "cmd_kernel_push", "push kernel/ to Kaggle"),
    "kernel-output": ("commands", "cmd_kernel_output", "fetch the kernel's output (its submission)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m digitrec", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.add_argument("--config", default=str(in_project(DEFAULT_CONFIG)), help="YAML config (default: %(default)s)")
        p.add_argument("--run", default=None, help="a run folder or name under runs/ (default: the newest)")
        p.add_argument("--runs-dir", default="runs", help="where runs live, in the project (default: %(default)s)")
        p.add_argument("--tta", default=None, action=argparse.BooleanOptionalAction,
                       help="predict: test-time augmentation (default: as the run was trained)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. BS=128 ACCUM=8 (train) or STUDY=batch (sweep)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup()
    module, function, _ = COMMANDS[args.command]
    try:
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
