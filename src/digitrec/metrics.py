"""Classification metrics from probabilities, by scikit-learn."""
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
