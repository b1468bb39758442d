"""digitrec: a fast, honest pipeline for Kaggle's Digit Recognizer (GroupNorm CNN, CV folds, fold ensemble)."""

__version__ = "0.1.0"
