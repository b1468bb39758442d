"""download / submit / scores / kernel push+output against a fake Kaggle API, driven by the real client;
and where `make train` gets its data when there is none here (a download, else the demo set).

In-process tests patch kagglesdk's endpoint map to the fake server; one test drives the CLI in a
subprocess through the server as its HTTP proxy. Only loopback addresses are ever reached (asserted).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import ipaddress
import json
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fake_kaggle
from conftest import run_cli
from digitrec import commands, competition, config, data, kaggle_client, kernel
from digitrec.errors import UserError
from fake_kaggle import FakeKaggle

SECRETS = (fake_kaggle.TOKEN, fake_kaggle.KEY, fake_kaggle.BASIC)
WRONG_KEY = "wrong-legacy-key-77aa88bb99cc"


def args(*overrides: str) -> argparse.Namespace:
    return argparse.Namespace(overrides=list(overrides), run=None, runs_dir="runs",
                              config="configs/default.yaml", debug=False)


def assert_no_secret(folder: Path, *texts: str) -> None:
    """No credential, in any form, in the given output nor in any file under folder."""
    blobs = list(texts) + [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
    for secret in (*SECRETS, WRONG_KEY):
        assert not any(secret in blob for blob in blobs), f"a credential leaked: {secret[:8]}..."


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may reach anything but loopback; HOME is a temp dir so ~/.kaggle is empty."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            assert ipaddress.ip_address(address[0]).is_loopback, f"a test tried to reach {address}"
        return real_connect(sock, address)

    def getaddrinfo(host, *rest, **kw):
        assert host in ("localhost", "127.0.0.1", "::1", None), f"a test tried to resolve {host}"
        return real_getaddrinfo(host, *rest, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, workdir: Path):
    """The fake server, with the client pointed at it, fast retries, and the cwd a temp project."""
    from kagglesdk import kaggle_env

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(kaggle_client, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    with FakeKaggle() as server:
        for env in kaggle_env.KaggleEnv:  # every environment, so nothing can reach the real Kaggle
            monkeypatch.setitem(kaggle_env._env_to_endpoint, env, server.url)
        yield server
    assert len(server.received) < fake_kaggle.MAX_REQUESTS


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.TOKEN)


@pytest.fixture
def legacy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", fake_kaggle.USER)
    monkeypatch.setenv("KAGGLE_KEY", fake_kaggle.KEY)


def write_submission(folder: Path, name: str = "gn_cnn-20250101-000000", rows: int = 28000, demo: bool = False) -> Path:
    path = folder / f"{name}{'.DEMO' if demo else ''}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"ImageId": np.arange(1, rows + 1), "Label": np.arange(rows) % 10}).to_csv(path, index=False)
    path.with_suffix(".json").write_text(json.dumps({"run": f"runs/{name}", "demo_data": demo, "oof_accuracy": 0.9912}))
    return path


def competition_zip(train_rows: int = competition.TRAIN_ROWS, test_rows: int = competition.TEST_ROWS) -> bytes:
    """The competition archive's exact shape (headers, row counts), all-zero pixels: deflates to ~0.7 MB."""
    pixels = ",".join(competition.PIXELS).encode()
    files = {"train.csv": b"label," + pixels + b"\n" + (b"7" + b",0" * 784 + b"\n") * train_rows,
             "test.csv": pixels + b"\n" + (b"0" + b",0" * 783 + b"\n") * test_rows,
             "sample_submission.csv": b"ImageId,Label\n" + b"".join(b"%d,0\n" % i for i in range(1, test_rows + 1))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return buf.getvalue()


# ---------------------------------------------------------------- credentials


def test_credential_sources_in_the_clients_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert kaggle_client.credential_source() is None
    message = kaggle_client.no_credentials_message("make download")
    for place in ("KAGGLE_API_TOKEN", "~/.kaggle/access_token", "KAGGLE_USERNAME + KAGGLE_KEY", "kaggle.json"):
        assert place in message
    config_dir = tmp_path / "kaggle-config"
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "u", "key": WRONG_KEY}))
    assert kaggle_client.credential_source() == str(config_dir / "kaggle.json")
    assert kaggle_client.redact(f"x {WRONG_KEY} y") == "x [redacted] y"
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k" * 8)
    assert kaggle_client.credential_source() == "KAGGLE_USERNAME + KAGGLE_KEY"
    (tmp_path / "home" / ".kaggle").mkdir()
    (tmp_path / "home" / ".kaggle" / "access_token").write_text("t" * 20)
    assert kaggle_client.credential_source().endswith("access_token")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "T" * 20)
    assert kaggle_client.credential_source() == "KAGGLE_API_TOKEN"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # a kernel uploads nothing, downloads nothing
    assert kaggle_client.credential_source() is None


# ---------------------------------------------------------------- submit


def test_submit_uploads_the_file_and_records_it(fake: FakeKaggle, token, workdir: Path, capsys) -> None:
    sub = write_submission(workdir / "submissions")
    commands.cmd_submit(args("msg=first try"))
    upload = fake.calls("StartSubmissionUpload")[0].json()
    assert upload["competitionName"] == "digit-recognizer" and upload["fileName"] == sub.name
    assert fake.uploads["blob-1"] == sub.read_bytes()
    create = fake.calls("CreateSubmission")[0].json()
    assert create == {"competitionName": "digit-recognizer", "blobFileTokens": "blob-1",
                      "submissionDescription": "first try"}
    entry, = commands.read_ledger(workdir / "submissions")
    assert entry["outcome"] == "submitted" and entry["ref"] == 50001 and entry["file"] == str(Path("submissions") / sub.name)
    assert entry["sha256"] == hashlib.sha256(sub.read_bytes()).hexdigest()

    commands.cmd_scores(args())
    out = capsys.readouterr()
    score_line = next(line for line in out.out.splitlines() if line.startswith("2025-01-02"))
    assert "COMPLETE" in score_line and "0.98765" in score_line and entry["sha256"][:12] in score_line
    assert_no_secret(workdir, out.out, out.err)


def test_dry_run_shows_the_requests_and_changes_nothing(fake: FakeKaggle, workdir: Path, monkeypatch, capsys) -> None:
    sub = write_submission(workdir / "submissions")
    before = sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*"))
    commands.cmd_submit(args())  # no credentials: a dry run by default
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.TOKEN)
    commands.cmd_submit(args("DRY_RUN=1", f"SUB={sub}", "MSG=just looking"))
    commands.cmd_submit(args("dry-run=yes"))
    out = capsys.readouterr().out
    assert out.count("DRY RUN") == 3 and "no Kaggle credentials" in out and "DRY_RUN=1" in out
    assert '"competitionName": "digit-recognizer"' in out and '"submissionDescription": "just looking"' in out
    assert "OOF accuracy 99.1200%" in out  # the default message, from the run's record
    assert fake.received == [] and sorted((p, p.stat().st_mtime_ns) for p in workdir.rglob("*")) == before


def test_submit_refuses_demo_runs_and_invalid_files(fake: FakeKaggle, token, workdir: Path) -> None:
    write_submission(workdir / "submissions", demo=True)
    with pytest.raises(UserError, match="demo set"):
        commands.cmd_submit(args())
    short = write_submission(workdir / "elsewhere", rows=27999)
    with pytest.raises(UserError, match="27999 rows, expected 28000"):
        commands.cmd_submit(args(f"sub={short}"))
    with pytest.raises(UserError, match="SUB=path, MSG=text and DRY_RUN=1, not epochs=3$"):
        commands.cmd_submit(args("epochs=3"))
    with pytest.raises(UserError, match="^setting 'dry_run' in the command line must be bool, got 'maybe'$"):
        commands.cmd_submit(args("dry_run=maybe"))
    assert fake.received == []


def test_rules_not_accepted_points_to_the_rules(fake: FakeKaggle, legacy, workdir: Path) -> None:
    sub = write_submission(workdir / "submissions")
    fake.fail("StartSubmissionUpload", 403)
    with pytest.raises(UserError, match="HTTP 403: accept the competition rules") as e:
        commands.cmd_submit(args())
    assert kaggle_client.RULES_URL in str(e.value) and "is kept" in str(e.value) and sub.is_file()
    entry, = commands.read_ledger(workdir / "submissions")
    assert entry["outcome"] == "failed" and "403" in entry["reply"]
    assert fake.calls("CreateSubmission") == []


def test_bad_credentials_say_so_without_showing_them(fake: FakeKaggle, workdir: Path, monkeypatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", fake_kaggle.USER)
    monkeypatch.setenv("KAGGLE_KEY", WRONG_KEY)
    with pytest.raises(UserError, match="HTTP 401: Kaggle rejected the credentials") as e:
        commands.cmd_scores(args())  # the server echoes the Basic credential: it must come back redacted
    assert "[redacted]" in str(e.value) and kaggle_client.TOKEN_URL in str(e.value)
    assert len(fake.calls("ListSubmissions")) == 1  # a 401 is not retried
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_" + WRONG_KEY)  # Kaggle reports it inactive
    with pytest.raises(UserError, match="did not accept the credentials from KAGGLE_API_TOKEN"):
        commands.cmd_scores(args())
    assert_no_secret(workdir, str(e.value))


def test_unknown_competition(fake: FakeKaggle, token) -> None:
    fake.competition = "digit-recognizer-2"
    with pytest.raises(UserError, match="HTTP 404: Kaggle does not know the competition 'digit-recognizer'"):
        commands.cmd_scores(args())


def test_server_errors_and_resets_are_retried_a_bounded_number_of_times(fake: FakeKaggle, token, capsys) -> None:
    fake.fail("ListSubmissions", 503, "reset")
    commands.cmd_scores(args())
    assert len(fake.calls("ListSubmissions")) == 3
    assert capsys.readouterr().err.count("retrying") == 2
    fake.fail("ListSubmissions", *[502] * 10)
    with pytest.raises(UserError, match="HTTP 502 from ListSubmissions after 4 attempt"):
        commands.cmd_scores(args())
    assert len(fake.calls("ListSubmissions")) == 3 + 4


def test_a_failed_create_submission_is_not_retried(fake: FakeKaggle, token, workdir: Path) -> None:
    write_submission(workdir / "submissions")
    fake.fail("StartSubmissionUpload", "reset")  # before anything is created: retried
    fake.fail("CreateSubmission", 503)  # may have been recorded: never sent twice
    with pytest.raises(UserError, match="may have gone through anyway: check `make scores`"):
        commands.cmd_submit(args())
    assert len(fake.calls("StartSubmissionUpload")) == 2 and len(fake.calls("CreateSubmission")) == 1


def test_a_failed_upload_put_is_not_a_success(fake: FakeKaggle, token, workdir: Path) -> None:
    write_submission(workdir / "submissions")
    fake.fail("PUT", 500)
    with pytest.raises(UserError, match=r"the upload \(PUT\) .* failed, so nothing was submitted"):
        commands.cmd_submit(args())
    assert fake.calls("CreateSubmission") == []
    assert commands.read_ledger(workdir / "submissions")[0]["outcome"] == "failed"


def test_a_silent_server_times_out(fake: FakeKaggle, token, monkeypatch) -> None:
    monkeypatch.setattr(kaggle_client, "TIMEOUT_S", 0.5)
    fake.fail("ListSubmissions", "hang")
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"no answer from Kaggle within 0.5s \(timeout\)"):
        commands.cmd_scores(args())
    assert time.perf_counter() - started < fake_kaggle.HANG_S


# ---------------------------------------------------------------- download


def test_train_downloads_the_data_when_credentials_exist(fake: FakeKaggle, legacy, workdir: Path, capsys) -> None:
    fake.data_zip = competition_zip()
    assert data.locate(None) is None  # nothing here: the data layer alone never downloads
    source = commands.find_or_fetch_data(None)  # what `make train` does with no local data
    assert source.path == data.competition_dir() and not source.demo
    assert all((workdir / "input" / "digit-recognizer" / name).is_file() for name in competition.FILES)
    assert (workdir / "input" / "digit-recognizer.zip").read_bytes() == fake.data_zip
    assert commands.with_data(config.Config()).data is None  # found again by the pipeline: a rerun resumes
    assert fake.calls("DownloadDataFiles")[0].json() == {"competitionName": "digit-recognizer"}
    commands.cmd_download(args())  # already there: verified, nothing fetched
    out = capsys.readouterr()
    assert "train.csv 42000 rows, test.csv 28000 rows, sample_submission.csv 28000 rows" in out.out
    assert len(fake.calls("DownloadDataFiles")) == 1
    assert_no_secret(workdir, out.out, out.err)


def test_without_credentials_train_falls_back_to_the_demo_set(workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    with pytest.raises(UserError, match=r"^no competition data in input/digit-recognizer/, .*`make download`"):
        data.load_data(None)  # the data layer alone neither downloads nor makes up data
    named = commands.find_or_fetch_data(None, fetch=False)  # a torchrun rank other than 0
    assert named.demo and not (workdir / "input").exists()
    source = commands.find_or_fetch_data(None)
    assert source.demo and source.path == named.path == data.demo_dir()
    trained = commands.with_data(config.Config())  # what `make train` hands the pipeline
    assert trained.data == str(data.demo_dir()) and data.locate(trained.data).demo


def test_a_download_that_fails_verification_is_kept_aside(fake: FakeKaggle, legacy, workdir: Path) -> None:
    fake.data_zip = competition_zip(train_rows=10, test_rows=10)
    with pytest.raises(UserError, match="has 10 data rows, the competition's has 42000") as e:
        commands.cmd_download(args())
    assert "kept at input/.download/digit-recognizer.zip" in str(e.value)
    assert (workdir / "input/.download/digit-recognizer.zip").is_file() and not (workdir / "input/digit-recognizer").exists()


def test_download_errors(fake: FakeKaggle, workdir: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="needs Kaggle credentials and found none.*KAGGLE_API_TOKEN"):
        commands.cmd_download(args())
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.TOKEN)
    fake.fail("DownloadDataFiles", 403)
    with pytest.raises(UserError, match="download failed: HTTP 403: accept the competition rules"):
        commands.cmd_download(args())
    assert not (workdir / "input" / "digit-recognizer").exists()


# ---------------------------------------------------------------- kernel push and output


def test_kernel_push_and_output(fake: FakeKaggle, legacy, workdir: Path, capsys) -> None:
    with pytest.raises(UserError, match="make kernel"):
        commands.cmd_kernel_push(args())
    commands.cmd_kernel(args("epochs=2"))  # the id comes from KAGGLE_USERNAME
    commands.cmd_kernel_push(args())
    saved = fake.calls("SaveKernel")[0].json()
    assert saved["slug"] == f"{fake_kaggle.USER}/digitrec" and saved["text"] == (workdir / "kernel" / kernel.SCRIPT).read_text()
    assert saved["enableGpu"] is True and saved["enableInternet"] is False
    assert saved["competitionDataSources"] == ["digit-recognizer"] and saved["kernelType"] == "script"

    fake.kernel_status = "RUNNING"
    with pytest.raises(UserError, match="is RUNNING, not done yet"):
        commands.cmd_kernel_output(args())
    fake.kernel_status = "COMPLETE"
    sub = write_submission(workdir / "made-on-kaggle", name="submission")
    fake.kernel_files = {"submission.csv": sub.read_bytes(), "runs/x/metrics.json": b"{}"}
    commands.cmd_kernel_output(args())
    assert (workdir / "kernel/output/submission.csv").read_bytes() == sub.read_bytes()
    assert (workdir / "kernel/output/runs/x/metrics.json").is_file()
    out = capsys.readouterr()
    assert "make submit SUB=kernel/output/submission.csv" in out.out
    assert_no_secret(workdir, out.out, out.err)


# ---------------------------------------------------------------- the CLI, through the server as a proxy


def test_cli_submit_through_the_real_client(workdir: Path, tmp_path: Path) -> None:
    sub = write_submission(workdir / "submissions")
    env = {"HOME": str(tmp_path / "home"), "KAGGLE_USERNAME": fake_kaggle.USER, "KAGGLE_KEY": fake_kaggle.KEY,
           "KAGGLE_API_ENVIRONMENT": "LOCALHOST", "NO_PROXY": "", "no_proxy": ""}
    with FakeKaggle() as server:
        env["HTTP_PROXY"] = env["http_proxy"] = server.url
        server.fail("StartSubmissionUpload", 403)
        refused = run_cli(["submit"], workdir, timeout=60, **env)
        done = run_cli(["submit", "msg=from the CLI"], workdir, timeout=60, **env)
    assert refused.returncode == 2, refused.stderr
    error_lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and kaggle_client.RULES_URL in error_lines[0]
    assert done.returncode == 0, done.stderr
    assert server.uploads["blob-1"] == sub.read_bytes()
    assert server.calls("CreateSubmission")[0].json()["submissionDescription"] == "from the CLI"
    assert [e["outcome"] for e in commands.read_ledger(workdir / "submissions")] == ["failed", "submitted"]
    assert_no_secret(workdir, refused.stdout, refused.stderr, done.stdout, done.stderr)

