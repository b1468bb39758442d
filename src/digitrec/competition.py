"""The competition's fixed facts, and where the project's folders are, here and in a Kaggle kernel.

A leaf: it imports nothing from the package, so every module may import it without making a cycle.
Paths are read from the environment at each call, so a kernel (or a test) can set them first.
"""
from __future__ import annotations

import os
from pathlib import Path

NAME = "digit-recognizer"
FILES = ("train.csv", "test.csv", "sample_submission.csv")
PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_HEADER = ["label", *PIXELS]
TEST_HEADER = PIXELS
SAMPLE_HEADER = ["ImageId", "Label"]  # sample_submission.csv's, and so every submission's
TRAIN_ROWS = 42000
TEST_ROWS = 28000  # test.csv's, sample_submission.csv's, and so every submission's

METADATA = "kernel-metadata.json"  # in kernel/, beside the script `make kernel` writes


def project_root() -> Path:
    """Where input/, runs/, submissions/ and kernel/ are: $DIGITREC_ROOT when set (a relative value
    follows the current folder), else the checkout that holds this package, else the current folder."""
    if os.environ.get("DIGITREC_ROOT"):
        return Path(os.environ["DIGITREC_ROOT"]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "pyproject.toml").is_file() else Path(".")


def in_project(path: str | Path) -> Path:
    """A folder named by a setting (runs_dir, DATA=, ...): as given when absolute, else in the project."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def kernel_dir() -> Path:
    """What `make kernel` builds and `make kernel-push` uploads."""
    return in_project("kernel")


def in_kernel() -> bool:
    """Running inside a Kaggle kernel (Kaggle sets this variable there)."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE"))


def kaggle_input() -> Path:
    """A kernel's data sources, read-only (DIGITREC_KAGGLE_INPUT remaps it for the kernel test)."""
    return Path(os.environ.get("DIGITREC_KAGGLE_INPUT", "/kaggle/input"))


def kaggle_working() -> Path | None:
    """In a kernel everything is written under /kaggle/working, the rest being read-only; None outside
    one (DIGITREC_KAGGLE_WORKING remaps it for the kernel test)."""
    if not in_kernel():
        return None
    return Path(os.environ.get("DIGITREC_KAGGLE_WORKING", "/kaggle/working"))
