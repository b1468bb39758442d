"""The submission file: fold-averaged test probabilities -> ImageId,Label, checked, written atomically."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from . import fileio
from .competition import SAMPLE_HEADER, TEST_ROWS
from .errors import UserError


def make_submission(test_probs: np.ndarray) -> pd.DataFrame:
    """test_probs: (folds, M, 10) or (M, 10); averaged over folds before the argmax."""
    mean = test_probs.mean(0) if test_probs.ndim == 3 else test_probs
    return pd.DataFrame({"ImageId": np.arange(1, len(mean) + 1), "Label": mean.argmax(1).astype(np.int64)})


def check_submission(frame: pd.DataFrame, expected_rows: int, where: str) -> None:
    """What Kaggle will check: the header, one row per test image, ImageId 1..M once each, Label 0..9."""
    if list(frame.columns) != SAMPLE_HEADER:
        raise UserError(f"{where}: header is {','.join(map(str, frame.columns))}, expected {','.join(SAMPLE_HEADER)}")
    if len(frame) != expected_rows:
        raise UserError(f"{where}: has {len(frame)} rows, expected {expected_rows} (one per test image)")
    for column in SAMPLE_HEADER:
        if not pd.api.types.is_integer_dtype(frame[column]):
            # pandas reads a column as integers only if every cell is one: the first cell that is not (blank,
            # text, 2.5, or a whole number written as a float: 3.0) is the row to name
            values = pd.to_numeric(frame[column], errors="coerce")
            wrong = np.flatnonzero(values.isna() | (values != values.round()))
            row = int(wrong[0]) if len(wrong) else 0
            cell = frame[column].iloc[row]
            hint = f" (write it as {int(values.iloc[row])})" if not len(wrong) else ""
            raise UserError(f"{where}: line {row + 2}, column {column}: '{cell}' is not an integer{hint}")
    ids = frame["ImageId"].to_numpy()
    wrong = np.flatnonzero(np.sort(ids) != np.arange(1, expected_rows + 1))
    if len(wrong):
        raise UserError(f"{where}: ImageId must be 1..{expected_rows} once each (first problem near ImageId {wrong[0] + 1})")
    labels = frame["Label"].to_numpy()
    bad_label = np.flatnonzero((labels < 0) | (labels > 9))
    if len(bad_label):
        row = int(bad_label[0])
        raise UserError(f"{where}: line {row + 2}: Label {labels[row]} is outside 0..9")


def read_submission(path: Path, expected_rows: int = TEST_ROWS) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"{path}: submission file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    check_submission(frame, expected_rows, str(path))
    return frame


def write_submission(frame: pd.DataFrame, path: Path, expected_rows: int) -> str:
    """Check, then write atomically; returns the file's sha256."""
    check_submission(frame, expected_rows, str(path))
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    data = buf.getvalue().encode()
    fileio.write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
