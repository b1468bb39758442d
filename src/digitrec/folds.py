"""Stratified folds and stratified subsets, from scikit-learn, seeded so a seed always gives the same split."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split


def stratified_subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Row indices of a stratified subset of `limit` rows (all rows, in order, when limit is None or too big)."""
    rows = np.arange(len(labels))
    if limit is None or limit >= len(labels):
        return rows
    subset, _ = train_test_split(rows, train_size=limit, stratify=labels, random_state=seed)
    return np.sort(subset)


def make_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """fold_of[i] = the fold in which row i is held out for validation."""
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of[val] = fold
    return fold_of
