"""Bad input: every broken CSV or archive gets one line naming the file, line and column, exit code 2,
and nothing written (no run folder, no submission, no cache entry).

One CLI run proves the exit code and the single line end to end (--debug: test_config_errors.py); the rest of the catalogue goes through
digitrec.data in-process, which is where the CLI's messages come from."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli
from digitrec import competition, config, data, runs
from digitrec.errors import UserError

TRAIN_HEADER = ",".join(competition.TRAIN_HEADER)
TEST_HEADER = ",".join(competition.TEST_HEADER)


@pytest.fixture(scope="module")
def lines(demo_dir: Path) -> dict[str, list[str]]:
    """The first six data rows of the demo train.csv and test.csv (valid rows to break one cell at a time)."""
    train = (demo_dir / "train.csv").read_text().splitlines()
    test = (demo_dir / "test.csv").read_text().splitlines()
    assert train[0] == TRAIN_HEADER and test[0] == TEST_HEADER
    return {"train": train[1:7], "test": test[1:7]}


def csv(header: str, rows: list[str], end: str = "\n") -> bytes:
    return (end.join([header, *rows]) + end).encode()


def set_cell(rows: list[str], row: int, column: int, value: str) -> list[str]:
    rows = list(rows)
    cells = rows[row].split(",")
    cells[column] = value
    rows[row] = ",".join(cells)
    return rows


def refused(call, *args) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message, "one line"
    return message


def written(cwd: Path) -> list[Path]:
    """Everything under cwd except the temp Kaggle config folder the test harness makes."""
    return sorted(p for p in cwd.rglob("*") if p.is_file() or (p.is_dir() and not any(p.iterdir()) and p.name != "kaggle-config"))


def write_set(folder: Path, demo_dir: Path, **replace: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in competition.FILES:
        key = name.removesuffix(".csv")
        (folder / name).write_bytes(replace.get(key, (demo_dir / name).read_bytes()))
    return folder


# ---------------------------------------------------------------- end to end: exit code 2, one line, nothing written


@pytest.mark.slow
def test_cli_bad_cell_is_one_line_exit_2_and_nothing_written(demo_dir: Path, lines, tmp_path: Path, workdir: Path) -> None:
    rows = set_cell(lines["train"], 2, 301, "-3")  # line 4, column pixel300
    folder = write_set(tmp_path / "bad", demo_dir, train=csv(TRAIN_HEADER, rows))
    result = run_cli(["train", "--config", str(ROOT / "configs/default.yaml"), f"DATA={folder}", "epochs=1"], workdir)
    assert result.returncode == 2, result.stderr
    # exactly one line on stderr, naming the file, the line (as an editor counts it) and the column
    assert result.stderr == f"error: {folder / 'train.csv'}: line 4, column pixel300: -3 is outside 0..255\n"
    assert written(workdir) == [], "a bad input must leave no run folder, submission or cache entry"


def test_missing_data_path() -> None:
    assert refused(data.locate, "nowhere/digits.zip") == "DATA=nowhere/digits.zip: no such folder or zip"


def test_relative_paths_are_the_project_roots(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DATA=, runs_dir and the data cache resolve from DIGITREC_ROOT (else the checkout), not the cwd."""
    monkeypatch.setenv("DIGITREC_ROOT", str(tmp_path))
    assert data.locate(None) is None  # nothing local here
    write_set(tmp_path / "mine", demo_dir)
    assert data.locate("mine").path == tmp_path / "mine"
    assert data.cache_dir() == tmp_path / "input" / ".cache"
    assert runs.runs_root(config.Config()) == tmp_path / "runs"
    assert runs.submissions_root(config.Config(submissions_dir="/elsewhere/subs")) == Path("/elsewhere/subs")
    monkeypatch.delenv("DIGITREC_ROOT")
    assert competition.project_root() == ROOT  # the checkout that holds the package


# ---------------------------------------------------------------- the catalogue, in-process


def test_valid_rows_parse(lines) -> None:
    images, labels = data.parse_train(csv(TRAIN_HEADER, lines["train"]))
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert data.parse_test(csv(TEST_HEADER, lines["test"])).shape == (6, 28, 28)


def test_crlf_line_endings_are_valid(lines) -> None:
    lf = data.parse_train(csv(TRAIN_HEADER, lines["train"]))
    crlf = data.parse_train(csv(TRAIN_HEADER, lines["train"], end="\r\n"))
    assert np.array_equal(lf[0], crlf[0]) and np.array_equal(lf[1], crlf[1])
    assert np.array_equal(data.parse_test(csv(TEST_HEADER, lines["test"], end="\r\n")),
                          data.parse_test(csv(TEST_HEADER, lines["test"])))


def test_extra_newline_at_end_is_harmless(lines) -> None:
    assert len(data.parse_train(csv(TRAIN_HEADER, lines["train"]) + b"\n\n")[1]) == 6


TRAIN_CASES = {
    "empty file": (lambda r: b"", "train.csv: empty file"),
    "header only": (lambda r: (TRAIN_HEADER + "\n").encode(), "train.csv: has a header but no data rows"),
    "wrong header": (lambda r: csv(TRAIN_HEADER.replace("label", "digit", 1), r),
                     "header column 1 is 'digit', expected 'label'"),
    "reordered header": (lambda r: csv(TRAIN_HEADER.replace("pixel5,pixel6", "pixel6,pixel5"), r),
                         "header column 7 is 'pixel6', expected 'pixel5' (wrong or reordered header)"),
    "784 columns (no label)": (lambda r: csv(TEST_HEADER, [x.split(",", 1)[1] for x in r]),
                               "header has 784 columns, expected 785 (label..pixel783)"),
    "short row": (lambda r: csv(TRAIN_HEADER, [*r[:3], r[3].rsplit(",", 1)[0], *r[4:]]),
                  "line 5 has 784 fields, expected 785"),
    "long row": (lambda r: csv(TRAIN_HEADER, [*r[:1], r[1] + ",0", *r[2:]]), "line 3 has 786 fields, expected 785"),
    "non-numeric cell": (lambda r: csv(TRAIN_HEADER, set_cell(r, 0, 100, "12a")),
                         "line 2, column pixel99: '12a' is not an integer"),
    "blank cell": (lambda r: csv(TRAIN_HEADER, set_cell(r, 4, 784, "")), "line 6, column pixel783: is blank"),
    "NaN cell": (lambda r: csv(TRAIN_HEADER, set_cell(r, 1, 10, "NaN")), "line 3, column pixel9: is blank"),
    "negative pixel": (lambda r: csv(TRAIN_HEADER, set_cell(r, 1, 1, "-1")), "line 3, column pixel0: -1 is outside 0..255"),
    "pixel above 255": (lambda r: csv(TRAIN_HEADER, set_cell(r, 5, 400, "256")),
                        "line 7, column pixel399: 256 is outside 0..255"),
    "huge integer": (lambda r: csv(TRAIN_HEADER, set_cell(r, 5, 400, "99999999999")),
                     "line 7, column pixel399: 99999999999 is far outside the valid range"),
    "float pixel": (lambda r: csv(TRAIN_HEADER, set_cell(r, 2, 50, "0.5")), "line 4, column pixel49: '0.5' is not an integer"),
    "integral float pixel": (lambda r: csv(TRAIN_HEADER, set_cell(r, 2, 50, "12.0")),
                             "line 4, column pixel49: '12.0' is not an integer"),
    "exponent pixel": (lambda r: csv(TRAIN_HEADER, set_cell(r, 2, 50, "1e2")), "line 4, column pixel49: '1e2' is not an integer"),
    "label above 9": (lambda r: csv(TRAIN_HEADER, set_cell(r, 3, 0, "10")), "line 5, column label: 10 is outside 0..9"),
    "negative label": (lambda r: csv(TRAIN_HEADER, set_cell(r, 0, 0, "-1")), "line 2, column label: -1 is outside 0..9"),
    "UTF-8 BOM": (lambda r: b"\xef\xbb\xbf" + csv(TRAIN_HEADER, r), "UTF-8 byte-order mark"),
    "truncated last line": (lambda r: csv(TRAIN_HEADER, r)[:-40], "line 7 has"),
    "blank line in the middle": (lambda r: csv(TRAIN_HEADER, [*r[:2], "", *r[2:]]), "line 4 is blank"),
    "not UTF-8": (lambda r: csv(TRAIN_HEADER, set_cell(r, 0, 3, "x")).replace(b",x,", b",\xe9,", 1),
                  "line 2, column pixel2:"),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_bad_train_csv(case: str, lines) -> None:
    make, expected = TRAIN_CASES[case]
    message = refused(data.parse_train, make(lines["train"]), "input/train.csv")
    assert message.startswith("input/train.csv: "), message
    assert expected in message, message


def test_truncated_last_line_is_named_as_such(lines) -> None:
    message = refused(data.parse_train, csv(TRAIN_HEADER, lines["train"])[:-40], "train.csv")
    assert message.endswith("(truncated last line?)"), message


def test_test_csv_with_a_label_column(lines) -> None:
    message = refused(data.parse_test, csv(TRAIN_HEADER, lines["train"]), "test.csv")
    assert message == "test.csv: has a 'label' column; test rows carry no label (is this train.csv?)"


def test_test_csv_bad_pixel(lines) -> None:
    message = refused(data.parse_test, csv(TEST_HEADER, set_cell(lines["test"], 0, 0, "300")), "test.csv")
    assert message == "test.csv: line 2, column pixel0: 300 is outside 0..255"


def test_sample_submission_checks() -> None:
    good = b"ImageId,Label\n1,0\n2,0\n3,0\n"
    data.check_sample(good, 3)
    assert refused(data.check_sample, good, 4) == "sample_submission.csv: has 3 rows but test.csv has 4"
    assert "ImageId 5 should be 2" in refused(data.check_sample, b"ImageId,Label\n1,0\n5,0\n3,0\n", 3)
    assert "header column 1 is 'Id'" in refused(data.check_sample, b"Id,Label\n1,0\n2,0\n3,0\n", 3)


# ---------------------------------------------------------------- files, folders and archives


def test_missing_file(demo_dir: Path, tmp_path: Path) -> None:
    folder = write_set(tmp_path / "set", demo_dir)
    (folder / "test.csv").unlink()
    message = refused(data.load, data.Source(folder))
    assert message.startswith(f"{folder / 'test.csv'}: file not found"), message


def test_data_path_that_is_a_csv(demo_dir: Path) -> None:
    message = refused(data.locate, str(demo_dir / "train.csv"))
    assert "must be a folder holding train.csv, test.csv, sample_submission.csv or a .zip" in message


def test_zip_without_the_expected_members(demo_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(demo_dir / "train.csv", "train.csv")
        z.write(demo_dir / "test.csv", "test.csv")
    message = refused(data.load, data.locate(str(archive)))
    assert message == f"{archive}: zip has no member sample_submission.csv (expected train.csv, test.csv, sample_submission.csv)"


def test_zip_with_members_in_a_folder_loads(demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in competition.FILES:
            z.write(demo_dir / name, f"digit-recognizer/{name}")
    monkeypatch.chdir(tmp_path)
    assert len(data.load(data.locate(str(archive))).train_labels) == 1347


def test_not_a_zip(tmp_path: Path) -> None:
    fake = tmp_path / "digit-recognizer.zip"
    fake.write_text("this is not a zip")
    assert refused(data.load, data.Source(fake)) == f"{fake}: not a valid zip file"


def test_bad_file_leaves_no_cache_entry(demo_dir: Path, lines, tmp_path: Path) -> None:
    """Validation runs before the cache write; a good set is cached, a bad one never is."""
    bad = write_set(tmp_path / "bad", demo_dir,
                    sample_submission=b"ImageId,Label\n1,0\n")  # 1 row, test.csv has 450
    cache = tmp_path / "cache"
    message = refused(data.load, data.Source(bad), cache)
    assert message == f"{bad / 'sample_submission.csv'}: has 1 rows but test.csv has 450"
    assert not cache.exists()
    dataset = data.load(data.Source(demo_dir), cache)
    assert len(list(cache.glob("*.npz"))) == 1 and len(dataset.test_images) == 450


def test_warm_cache_reads_no_csv_and_a_touched_file_reuses_its_content(demo_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The size+mtime index spares a warm load the CSV bytes; touching a file re-reads and re-hashes it,
    finds the same content cached and parses nothing; changing a cell parses (and validates) again."""
    folder = write_set(tmp_path / "set", demo_dir)
    monkeypatch.chdir(tmp_path)
    first = data.load(data.Source(folder))

    def forbidden(*args, **kwargs):
        raise AssertionError("should not have been called")

    with monkeypatch.context() as patch:
        patch.setattr(data.Source, "read", forbidden)
        warm = data.load(data.Source(folder))
    assert warm.content_hash == first.content_hash and np.array_equal(warm.train_images, first.train_images)

    train_csv = folder / "train.csv"
    stat = train_csv.stat()
    os.utime(train_csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with monkeypatch.context() as patch:
        patch.setattr(data, "parse_all", forbidden)
        assert data.load(data.Source(folder)).content_hash == first.content_hash

    lines = train_csv.read_bytes().splitlines(keepends=True)
    lines[1] = b"1" + lines[1][1:] if not lines[1].startswith(b"1,") else b"2" + lines[1][1:]
    train_csv.write_bytes(b"".join(lines))
    changed = data.load(data.Source(folder))
    assert changed.content_hash != first.content_hash and changed.train_labels[0] != first.train_labels[0]
