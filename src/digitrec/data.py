"""Find the competition CSVs, parse them fast, validate them, cache them as uint8 arrays.

Local data only, in order: DATA= (a folder or a zip); input/digit-recognizer/; a digit-recognizer.zip in
input/ (unzipped beside it); /kaggle/input (in a Kaggle kernel). What to do when there is none (download
it, or fall back to the embedded demo set written here) is the commands' choice (commands.py): this
module never talks to Kaggle.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import competition, fileio
from .competition import FILES, PIXELS, SAMPLE_HEADER, TEST_HEADER, TRAIN_HEADER
from .errors import UserError

DEMO_MARKER = "DEMO_DATA_NOT_FOR_SUBMISSION"
CACHE_VERSION = "2"


def input_dir() -> Path:
    """The project's input/: the competition's files and zip, the demo set, the parse cache."""
    return competition.in_project("input")


def competition_dir() -> Path:
    return input_dir() / competition.NAME


def demo_dir() -> Path:
    return input_dir() / "demo-digits"


def cache_dir() -> Path:
    return input_dir() / ".cache"


@dataclass
class Source:
    """Where the three CSVs are: a folder, or a zip holding them (at its root or in one folder)."""

    path: Path
    demo: bool = False

    def read(self, name: str) -> bytes:
        if self.path.suffix == ".zip":
            try:
                with zipfile.ZipFile(self.path) as z:
                    members = [m for m in z.namelist() if Path(m).name == name]
                    if not members:
                        raise UserError(f"{self.path}: zip has no member {name} (expected {', '.join(FILES)})")
                    return z.read(members[0])
            except zipfile.BadZipFile:
                raise UserError(f"{self.path}: not a valid zip file") from None
        file = self.path / name
        if not file.is_file():
            raise UserError(f"{file}: file not found (a data folder needs {', '.join(FILES)})")
        try:
            return file.read_bytes()
        except OSError as e:
            raise UserError(f"{file}: cannot be read ({e.strerror or e})") from None

    def name_of(self, member: str) -> str:
        """How error messages name a member: folder/train.csv, or archive.zip:train.csv."""
        return str(self.path / member) if self.path.is_dir() else f"{self.path}:{member}"

    def describe(self) -> str:
        return f"{self.path}{' (DEMO: not the competition data)' if self.demo else ''}"


@dataclass
class Dataset:
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray  # (M, 28, 28) uint8
    source: str
    demo: bool
    content_hash: str  # of the three files, so a run records exactly which data it saw


# ---------------------------------------------------------------- parsing and validation


def _fail(file: str, message: str) -> UserError:
    return UserError(f"{file}: {message}")


def check_header(raw: bytes, file: str, expected: list[str]) -> None:
    if not raw or raw.isspace():  # isspace stops at the first other byte; strip() would copy the file
        raise _fail(file, "empty file")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise _fail(file, "starts with a UTF-8 byte-order mark (saved by Excel?); save it as plain CSV without BOM")
    line_end = raw.find(b"\n")
    first = raw[:line_end if line_end >= 0 else len(raw)].rstrip(b"\r").decode("utf-8", "replace")
    header = [h.strip() for h in first.split(",")]
    if header == expected:
        return
    if file.endswith("test.csv") and header and header[0] == "label":
        raise _fail(file, "has a 'label' column; test rows carry no label (is this train.csv?)")
    if len(header) != len(expected):
        raise _fail(file, f"header has {len(header)} columns, expected {len(expected)} ({expected[0]}..{expected[-1]})")
    col = next(i for i, (h, e) in enumerate(zip(header, expected)) if h != e)
    raise _fail(file, f"header column {col + 1} is '{header[col]}', expected '{expected[col]}' (wrong or reordered header)")


_INT = re.compile(r"[-+]?\d+")
_INT32 = 2**31 - 1


def _diagnose(raw: bytes, file: str, header: list[str]) -> UserError:
    """The fast parser refused the file; find the first bad line and cell to say exactly what is wrong."""
    lines = raw.decode("utf-8", "replace").splitlines()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            return _fail(file, f"line {number} is blank (delete it)")
        cells = line.split(",")
        if len(cells) != len(header):
            last = number == len(lines) and not raw.endswith(b"\n")
            hint = " (truncated last line?)" if last and len(cells) < len(header) else ""
            return _fail(file, f"line {number} has {len(cells)} fields, expected {len(header)}{hint}")
        for column, cell in zip(header, cells):
            text = cell.strip()
            if not _INT.fullmatch(text):
                what = "is blank" if text in ("", "NaN", "nan", "NA") else f"'{text[:20]}' is not an integer"
                return _fail(file, f"line {number}, column {column}: {what}")
            if abs(int(text)) > _INT32:
                return _fail(file, f"line {number}, column {column}: {text[:20]} is far outside the valid range")
    return _fail(file, "could not be parsed as CSV")


def parse_csv(raw: bytes, file: str, header: list[str], dtype: type = np.int32) -> np.ndarray:
    """CSV bytes -> int array (rows, columns), checked for header, shape and integer cells.
    Line numbers in messages count the header as line 1, as an editor shows them."""
    check_header(raw, file, header)
    # blank lines at the very end are harmless (an editor's extra newline); anywhere else they are an error.
    # Trimming copies the whole file, so it is done only when there is more than one line end to trim.
    end = len(raw)
    while end and raw[end - 1] in b"\r\n\t ":
        end -= 1
    body = raw if raw[end:] in (b"", b"\n", b"\r\n") else raw[:end] + b"\n"
    # pandas would quietly turn 12.0 or 1e2 into an integer: a '.' or an exponent means float pixels
    start = body.find(b"\n") + 1
    if any(body.find(c, start) >= 0 for c in (b".", b"e", b"E")):
        raise _diagnose(raw, file, header)
    try:
        frame = pd.read_csv(io.BytesIO(body), dtype=dtype, engine="c", skip_blank_lines=False)
    except (ValueError, OverflowError, pd.errors.ParserError):
        raise _diagnose(raw, file, header) from None
    if len(frame) == 0:
        raise _fail(file, "has a header but no data rows")
    return frame.to_numpy()


def _check_range(values: np.ndarray, file: str, header: list[str], low: int, high: int, first_col: int = 0) -> None:
    block = values[:, first_col:] if first_col else values
    bad = (block < low) | (block > high)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise _fail(file, f"line {row + 2}, column {header[col + first_col]}: {block[row, col]} is outside {low}..{high}")


def _parse_pixels(raw: bytes, file: str, header: list[str]) -> np.ndarray:
    """Parse straight into uint8, which pandas refuses for any cell outside 0..255: the fast path for good
    files. A refused file is parsed again as int32 (or its parse error raised), so the caller's range
    checks can name its first bad cell."""
    try:
        return parse_csv(raw, file, header, np.uint8)
    except UserError:
        return parse_csv(raw, file, header)


def parse_train(raw: bytes, file: str = "train.csv") -> tuple[np.ndarray, np.ndarray]:
    values = _parse_pixels(raw, file, TRAIN_HEADER)
    _check_range(values[:, :1], file, TRAIN_HEADER, 0, 9)
    _check_range(values, file, TRAIN_HEADER, 0, 255, first_col=1)
    return values[:, 1:].astype(np.uint8).reshape(-1, 28, 28), values[:, 0].astype(np.int64)


def parse_test(raw: bytes, file: str = "test.csv") -> np.ndarray:
    values = _parse_pixels(raw, file, TEST_HEADER)
    _check_range(values, file, TEST_HEADER, 0, 255)
    return values.astype(np.uint8, copy=False).reshape(-1, 28, 28)


def check_sample(raw: bytes, test_rows: int, file: str = "sample_submission.csv") -> None:
    values = parse_csv(raw, file, SAMPLE_HEADER)
    if len(values) != test_rows:
        raise _fail(file, f"has {len(values)} rows but test.csv has {test_rows}")
    if not np.array_equal(values[:, 0], np.arange(1, test_rows + 1)):
        row = int(np.flatnonzero(values[:, 0] != np.arange(1, test_rows + 1))[0])
        raise _fail(file, f"line {row + 2}: ImageId {values[row, 0]} should be {row + 1} (ImageId runs 1..{test_rows})")


# ---------------------------------------------------------------- locating


def _has_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in FILES)


def unzip(archive: Path, dest: Path) -> None:
    """Extract the three CSVs into dest via a temp folder, so a kill never leaves half a dataset. Another
    process (a second torchrun rank) may finish the same unzip first: its folder is as good as ours."""
    source = Source(archive)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        for name in FILES:
            (tmp / name).write_bytes(source.read(name))
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _has_files(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def locate(data: str | None) -> Source | None:
    """The data DATA= names (relative to the project), else the first local copy found; None when
    there is none."""
    if data:
        path = competition.in_project(data)
        if not path.exists():
            raise UserError(f"DATA={data}: no such folder or zip")
        if path.is_file() and path.suffix != ".zip":
            raise UserError(f"DATA={data}: must be a folder holding {', '.join(FILES)} or a .zip of them")
        if path.is_dir() and not _has_files(path) and _has_files(path / competition.NAME):
            path = path / competition.NAME
        return Source(path, demo=(path / DEMO_MARKER).exists())
    local = competition_dir()
    if _has_files(local):
        return Source(local)
    archive = input_dir() / f"{competition.NAME}.zip"
    if archive.is_file():
        unzip(archive, local)
        return Source(local)
    kaggle_input = competition.kaggle_input()
    if kaggle_input.is_dir():
        # the competition's own folder first, then any other folder that holds the three files
        found = sorted(kaggle_input.rglob("train.csv"), key=lambda p: (p.parent.name != competition.NAME, str(p)))
        for train in found:
            if _has_files(train.parent):
                return Source(train.parent)
    return None


def no_data_message() -> str:
    return (f"no competition data in {competition_dir()}/, {input_dir()}/{competition.NAME}.zip or "
            f"{competition.kaggle_input()}/: get it with `make download`, or give DATA=<folder or zip>")


# ---------------------------------------------------------------- demo set


def write_demo(folder: Path) -> Path:
    """scikit-learn's bundled 8x8 handwritten digits, rendered MNIST-style (20x20 box centred in 28x28)
    into the competition's exact CSV format. Marked so that it is never submitted."""
    if _has_files(folder) and (folder / DEMO_MARKER).exists():
        return folder
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    images = (F.pad(box, (4, 4, 4, 4)).clamp(0, 1) * 255).round().to(torch.uint8).reshape(len(small), 784).numpy()
    x_train, x_test, y_train, _ = train_test_split(images, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    train = pd.DataFrame(x_train, columns=PIXELS)
    train.insert(0, "label", y_train)
    fileio.write_text(folder / "train.csv", train.to_csv(index=False))
    fileio.write_text(folder / "test.csv", pd.DataFrame(x_test, columns=PIXELS).to_csv(index=False))
    sample = pd.DataFrame({"ImageId": np.arange(1, len(x_test) + 1), "Label": 0})
    fileio.write_text(folder / "sample_submission.csv", sample.to_csv(index=False))
    fileio.write_text(folder / DEMO_MARKER, "scikit-learn digits rendered to 28x28; not the competition data\n")
    return folder


def demo_notice() -> str:
    bar = "!" * 78
    return (f"{bar}\n!! No competition data found: training on the EMBEDDED DEMO SET (scikit-learn digits).\n"
            f"!! This is NOT the competition data; its submission is marked and will not be uploaded.\n"
            f"!! Get the real data: `make download`, or put digit-recognizer.zip in input/, or DATA=<path>.\n{bar}")


# ---------------------------------------------------------------- loading with a cache


def _stat_key(source: Source) -> str:
    """The files' path, size and modification time: a change to any of them means re-reading the bytes."""
    files = [source.path] if source.path.suffix == ".zip" else [source.path / name for name in FILES]
    digest = hashlib.sha1(CACHE_VERSION.encode())
    for file in files:
        try:
            st = file.stat()
        except OSError:
            return ""  # missing files are reported by source.read
        digest.update(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
    return digest.hexdigest()


def parse_all(raws: dict[str, bytes], source: Source) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the three files; train.csv and test.csv are parsed at once on two threads (pandas' C parser
    lets go of the GIL), which takes the cold load from the sum of the two to about the longer one."""
    with ThreadPoolExecutor(2) as pool:
        train = pool.submit(parse_train, raws["train.csv"], source.name_of("train.csv"))
        test = pool.submit(parse_test, raws["test.csv"], source.name_of("test.csv"))
        (train_images, train_labels), test_images = train.result(), test.result()
    check_sample(raws["sample_submission.csv"], len(test_images), source.name_of("sample_submission.csv"))
    return train_images, train_labels, test_images


def load(source: Source, cache: Path | None = None) -> Dataset:
    """Parse and validate the three files, or load them from the cache (input/.cache/, or `cache`) keyed
    by their content. A small index keyed by the files' size and mtime names that content key, so a warm
    load reads neither the 128 MB of CSV (or the zip) nor hashes it; touching or replacing a file goes
    back to its content."""
    cache = cache or cache_dir()
    stat_key = _stat_key(source)
    index = cache / f"{stat_key}.key"
    key = index.read_text().strip() if stat_key and index.is_file() else ""
    cached = cache / f"{key}.npz"
    if not (key and cached.is_file()):
        raws = {name: source.read(name) for name in FILES}
        digest = hashlib.sha1(CACHE_VERSION.encode())
        for name in FILES:
            digest.update(hashlib.sha1(raws[name]).digest())
        key = digest.hexdigest()
        cached = cache / f"{key}.npz"
        if not cached.is_file():
            train_images, train_labels, test_images = parse_all(raws, source)
            fileio.write_npz(cached, train_images=train_images, train_labels=train_labels, test_images=test_images)
        if stat_key:
            fileio.write_text(index, key + "\n")
    with np.load(cached, allow_pickle=False) as z:
        return Dataset(z["train_images"], z["train_labels"], z["test_images"], source.describe(), source.demo, key)


def load_data(data: str | None, announce=print) -> Dataset:
    source = locate(data)
    if source is None:
        raise UserError(no_data_message())
    if source.demo:
        print(demo_notice(), file=sys.stderr)
    dataset = load(source)
    announce(f"data: {dataset.source}: {len(dataset.train_labels)} train rows, {len(dataset.test_images)} test rows")
    return dataset
