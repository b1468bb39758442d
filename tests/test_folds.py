"""Folds are stratified, disjoint, cover every row and are stable for a seed; subsets are stratified."""
from __future__ import annotations

import numpy as np

from digitrec.folds import make_folds, stratified_subset


def _labels(n: int = 2003) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.choice(10, size=n, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum())


def test_folds_are_disjoint_cover_every_row_and_are_stratified() -> None:
    labels = _labels()
    fold_of = make_folds(labels, 5, seed=42)
    assert fold_of.min() == 0 and fold_of.max() == 4  # every row is held out in exactly one fold
    for fold in range(5):
        held_out = labels[fold_of == fold]
        for c in range(10):
            expected = (labels == c).sum() / 5
            assert abs((held_out == c).sum() - expected) <= 1, (fold, c)


def test_folds_are_stable_for_a_seed_and_change_with_it() -> None:
    labels = _labels()
    assert np.array_equal(make_folds(labels, 5, seed=7), make_folds(labels, 5, seed=7))
    assert not np.array_equal(make_folds(labels, 5, seed=7), make_folds(labels, 5, seed=8))


def test_stratified_subset_keeps_class_proportions() -> None:
    labels = _labels()
    rows = stratified_subset(labels, 500, seed=1)
    assert len(rows) == 500 and len(np.unique(rows)) == 500 and np.all(np.diff(rows) > 0)
    for c in range(10):
        assert abs((labels[rows] == c).mean() - (labels == c).mean()) < 0.01
    assert np.array_equal(stratified_subset(labels, None, seed=1), np.arange(len(labels)))
