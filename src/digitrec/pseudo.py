"""Pseudo-labels on the unlabelled test images (semi-supervised, noisy-student style): which nets may teach
a student, which test rows it learns from, and with what targets.

After the CV, the student of fold k (config pseudo_rounds >= 1) trains from scratch, with the usual
augmentation and dropout, on fold k's training rows plus the test rows its teachers labelled. The one rule
that keeps the out-of-fold accuracy honest: **a student's pseudo-labels come only from nets that never
trained on any of the student's held-out rows** (`may_teach`). With shared folds those are every member's
net of the student's fold; with bagged folds (members with their own fold_seed) only the nets whose held-out
rows contain the student's. A refit student holds nothing out, so the whole previous round's CV ensemble
teaches it. Test images only, never labels: test.csv has none.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fileio
from .config import Config


def may_teach(teacher_trained_on: np.ndarray, student_held_out: np.ndarray) -> bool:
    """Whether a net that trained on the rows of the mask `teacher_trained_on` may label test rows for a
    student that holds out the rows of the mask `student_held_out`: only if the two share no row."""
    return not bool(np.any(teacher_trained_on & student_held_out))


@dataclass(frozen=True)
class Selection:
    """The test rows a student learns from, and its targets for them."""

    rows: np.ndarray  # (kept,) indices into the test rows
    targets: np.ndarray  # (kept,) int64 labels, or (kept, 10) float32 probabilities (pseudo_soft)
    teacher_labels: np.ndarray  # (test rows,) the argmax of the teachers' averaged probabilities
    teachers: int  # nets averaged

    def describe(self) -> str:
        kind = "soft targets" if self.targets.ndim == 2 else "hard labels"
        return f"{len(self.rows)} of {len(self.teacher_labels)} test rows from {self.teachers} teacher net(s), {kind}"


def select(teacher_probs: np.ndarray, cfg: Config) -> Selection:
    """teacher_probs: (nets, test rows, 10), each net's test probabilities. Kept: the rows on which every
    net picks the same label (pseudo_agree) and whose averaged probability of that label is at least
    pseudo_threshold. Targets: that label, or (pseudo_soft) the averaged probabilities sharpened by
    pseudo_temperature, softmax(log p / T). Label smoothing caps a net's confidence near 1 - 0.9 x 0.1, so
    a threshold of 0.99 keeps almost nothing from nets trained with label_smoothing 0.1."""
    mean = teacher_probs.mean(0)
    labels = mean.argmax(1)
    keep = mean.max(1) >= cfg.pseudo_threshold
    if cfg.pseudo_agree:
        keep &= (teacher_probs.argmax(2) == labels).all(0)
    rows = np.flatnonzero(keep)
    if cfg.pseudo_soft:
        logits = np.log(np.clip(mean[rows], 1e-12, 1.0)) / cfg.pseudo_temperature
        logits -= logits.max(1, keepdims=True)
        targets = np.exp(logits)
        targets = (targets / targets.sum(1, keepdims=True)).astype(np.float32)
    else:
        targets = labels[rows].astype(np.int64)
    return Selection(rows, targets, labels, len(teacher_probs))


def agreement(student_test_probs: np.ndarray, selection: Selection) -> dict:
    """How often a trained student's test labels differ from its teachers': on the rows it learnt from
    and on all test rows."""
    student = student_test_probs.argmax(1)
    differs = student != selection.teacher_labels
    return {"teachers": selection.teachers, "kept_rows": int(len(selection.rows)),
            "test_rows": int(len(student)), "differs_on_kept": int(differs[selection.rows].sum()),
            "differs_on_all": int(differs.sum())}


def student_data(split, selection: Selection):
    """A student's engine.FoldData: the split's labelled rows (the same held-out rows) plus the kept test
    images appended to the training rows, with their targets. Soft targets make every label a (10,)
    distribution, the labelled rows' one-hot."""
    import torch
    import torch.nn.functional as F

    device = split.images.device
    n = len(split.labels)
    kept = torch.from_numpy(selection.rows).to(device)
    targets = torch.from_numpy(selection.targets).to(device)
    labels = split.labels if targets.ndim == 1 else F.one_hot(split.labels, 10).float()
    return dataclasses.replace(
        split, images=torch.cat([split.images, split.test_images[kept]]), labels=torch.cat([labels, targets]),
        train_idx=torch.cat([split.train_idx, n + torch.arange(len(kept))]))


def save(path: Path, selection: Selection, teachers: list[str]) -> None:
    """What a student learns from, written before it trains: a resumed student reads it back, and the
    run's metrics compare the finished student with it."""
    fileio.write_npz(path, rows=selection.rows, targets=selection.targets, teacher_labels=selection.teacher_labels,
                     teachers=np.array(teachers))


def load(path: Path) -> tuple[Selection, list[str]]:
    saved = np.load(path, allow_pickle=False)
    teachers = [str(t) for t in saved["teachers"]]
    return Selection(saved["rows"], saved["targets"], saved["teacher_labels"], len(teachers)), teachers
