"""Classification metrics from probabilities, by scikit-learn; McNemar's paired test of two sets of predictions, by SciPy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss

CLASSES = list(range(10))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, log-loss, per-class accuracy (recall) and errors, and the confusion matrix (rows = truth)."""
    predicted = probs.argmax(1)
    confusion = confusion_matrix(labels, predicted, labels=CLASSES)
    support = confusion.sum(1)
    hits = np.diag(confusion)
    return {
        "rows": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "errors": int((predicted != labels).sum()),
        "log_loss": float(log_loss(labels, np.clip(probs, 1e-12, 1.0), labels=CLASSES)),
        "per_class": {str(c): {"rows": int(support[c]), "accuracy": float(hits[c] / max(support[c], 1)),
                               "errors": int(support[c] - hits[c])} for c in CLASSES},
        "confusion": confusion.tolist(),
    }


def mcnemar(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray) -> dict:
    """McNemar's exact test of two predictions of the same rows: only the rows where exactly one of them is
    right count. p is the two-sided binomial probability of a split at least this uneven if both were
    equally accurate. (a: the baseline, b: the change.)"""
    from scipy.stats import binomtest

    right_a, right_b = probs_a.argmax(1) == labels, probs_b.argmax(1) == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"rows": int(len(labels)), "a_errors": int((~right_a).sum()), "b_errors": int((~right_b).sum()),
            "only_a_right": only_a, "only_b_right": only_b, "p_value": float(p_value)}
