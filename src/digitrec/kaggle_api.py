"""Everything that talks to Kaggle: `make download`, `make submit`, `make scores`, `make kernel-push`,
`make kernel-output`, and the download `make train` falls back on (data.locate).

The `kaggle` package (2.2.x) authenticates when it is imported, so it is imported only inside `_client`,
and only after `credential_source()` found something to authenticate with. Every call goes through
`_call`, which bounds it (a socket timeout; a few retries with backoff for 5xx answers and dropped
connections) and turns each failure into one UserError line with every credential blanked out.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import config as config_mod
from . import data as data_mod
from . import fileio
from .errors import UserError
from .kernel import COMPETITION, KERNEL_DIR, METADATA
from .submission import COMPETITION_ROWS, read_submission

RULES_URL = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"
TOKEN_URL = "https://www.kaggle.com/settings/api"
TRAIN_ROWS = 42000  # the competition's train.csv; test.csv and sample_submission.csv have COMPETITION_ROWS
TIMEOUT_S = 60.0  # for each connect and each read on a socket, not for a whole transfer
RETRY_DELAYS = (2.0, 5.0, 10.0)  # seconds before the 2nd, 3rd and 4th attempt of a call
LEDGER = "ledger.jsonl"
# kaggle's competition_submit returns this message instead of raising when the upload PUT failed
UPLOAD_FAILED = "Could not submit to competition"
FORBIDDEN = f"accept the competition rules first at {RULES_URL} (join the competition), then retry"
NOT_FOUND = f"Kaggle does not know the competition '{COMPETITION}'"

T = TypeVar("T")


# ---------------------------------------------------------------- credentials and secrets


def _config_dir() -> Path:
    """Where the client reads kaggle.json: the same rule as kaggle 2.2's KaggleApi.config_dir."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path("~/.kaggle").expanduser()
    if home.exists():
        return home
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser()) / "kaggle"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(_read_text(path) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _token_files() -> list[Path]:
    return [Path("~/.kaggle/access_token").expanduser(), Path("~/.kaggle/access_token.txt").expanduser()]


def _oauth_file() -> Path:
    return Path("~/.kaggle/credentials.json").expanduser()  # written by `kaggle auth login`


def credential_source() -> str | None:
    """Where the client will find credentials, checked in its own order; None when there are none, and
    always inside a Kaggle kernel, which runs offline and uploads nothing."""
    if data_mod.in_kaggle_kernel():
        return None
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for path in _token_files():
        if _read_text(path):
            return str(path)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME + KAGGLE_KEY"
    legacy = _read_json(_config_dir() / "kaggle.json")
    if legacy.get("username") and legacy.get("key"):
        return str(_config_dir() / "kaggle.json")
    if _oauth_file().is_file():
        return f"{_oauth_file()} (kaggle auth login)"
    return None


def has_credentials() -> bool:
    return credential_source() is not None


def no_credentials_message(what: str) -> str:
    return (f"{what} needs Kaggle credentials and found none; Kaggle looks for KAGGLE_API_TOKEN (environment), "
            f"~/.kaggle/access_token, KAGGLE_USERNAME + KAGGLE_KEY (environment), then ~/.kaggle/kaggle.json "
            f"(or $KAGGLE_CONFIG_DIR/kaggle.json; here {_config_dir() / 'kaggle.json'}); "
            f"create a token at {TOKEN_URL}")


def kaggle_username() -> str | None:
    return os.environ.get("KAGGLE_USERNAME") or _read_json(_config_dir() / "kaggle.json").get("username")


def _secrets() -> list[str]:
    """Every credential this machine holds for Kaggle, in each form it could be echoed back in."""
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    legacy = _read_json(_config_dir() / "kaggle.json")
    key = os.environ.get("KAGGLE_KEY") or str(legacy.get("key", ""))
    values = [token, key, *(_read_text(p) for p in _token_files())]
    if token and Path(token).is_file():  # KAGGLE_API_TOKEN may name a file holding the token
        values.append(_read_text(Path(token)))
    values += [str(v) for k, v in _read_json(_oauth_file()).items() if "token" in k.lower() or "secret" in k.lower()]
    user = kaggle_username()
    if user and key:  # the HTTP Basic form the client sends
        values.append(base64.b64encode(f"{user}:{key}".encode()).decode())
    # short values are left alone: blanking a 3-letter string everywhere would garble messages
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "[redacted]")
    return text


def _need_credentials(what: str) -> str:
    source = credential_source()
    if source is None:
        raise UserError(no_credentials_message(what))
    return source


# ---------------------------------------------------------------- one bounded, explained call


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """The client gives its requests no timeout, so a dead connection would hang forever: every request
    made inside this block gets `seconds` per connect and per read, unless it set its own."""
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send

    def send(self, request, timeout=None, **kwargs):
        return original(self, request, timeout=seconds if timeout is None else timeout, **kwargs)

    HTTPAdapter.send = send
    try:
        yield
    finally:
        HTTPAdapter.send = original


def _client() -> Any:
    """An authenticated KaggleApi. authenticate() exits (SystemExit) when no credential is accepted."""
    from kaggle.api.kaggle_api_extended import KaggleApi  # importing kaggle authenticates: only here

    api = KaggleApi()
    api.authenticate()
    return api


def _rpc_of(error: BaseException) -> str:
    """The RPC (last URL segment) whose request failed, or ''."""
    request = getattr(error, "request", None) or getattr(getattr(error, "response", None), "request", None)
    return (getattr(request, "url", None) or "").rstrip("/").rsplit("/", 1)[-1]


def _transient(error: BaseException) -> bool:
    import requests

    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else 0
        return status >= 500 or status == 429
    return isinstance(error, requests.ConnectionError)  # refused, reset, dropped mid-answer


def _explain(error: BaseException, attempts: int, forbidden: str, not_found: str) -> str | None:
    """What went wrong, for the user; None for an error that is not Kaggle's or the network's (a bug)."""
    import requests

    if isinstance(error, SystemExit):  # authenticate() found credentials but Kaggle accepted none of them
        return (f"Kaggle did not accept the credentials from {credential_source()}: the token is wrong, expired "
                f"or revoked; create a new one at {TOKEN_URL}")
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        said = f" (Kaggle said: {_one_line(str(error))})"
        if status == 401:
            return (f"HTTP 401: Kaggle rejected the credentials from {credential_source()} (wrong, expired or "
                    f"revoked); create a new token at {TOKEN_URL}{said}")
        if status == 403:
            return f"HTTP 403: {forbidden}{said}"
        if status == 404:
            return f"HTTP 404: {not_found}{said}"
        if _transient(error):
            return f"HTTP {status} from {_rpc_of(error)} after {attempts} attempt(s); Kaggle is failing, try later{said}"
        return f"HTTP {status} from {_rpc_of(error)}{said}"
    if isinstance(error, requests.Timeout):
        return f"no answer from Kaggle within {TIMEOUT_S:g}s (timeout); check the connection and try again"
    if isinstance(error, requests.ConnectionError):
        return f"could not reach Kaggle after {attempts} attempt(s) ({_one_line(str(error), 160)})"
    if isinstance(error, ValueError):  # the client's own checks (kernel metadata, kernel ids)
        return _one_line(str(error))
    return None


def _call(action: str, fn: Callable[[Any], T], *, forbidden: str = FORBIDDEN, not_found: str = NOT_FOUND,
          once: tuple[str, str] | None = None) -> T:
    """fn(an authenticated KaggleApi), retried with backoff while Kaggle answers 5xx or drops the
    connection, at most 1 + len(RETRY_DELAYS) times. What the client prints is captured and shown
    redacted. once = (rpc, advice): an RPC that changes state on Kaggle (CreateSubmission, SaveKernel);
    it is never retried, since after a failure nobody knows whether it went through."""
    for attempt in range(1, len(RETRY_DELAYS) + 2):
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), _socket_timeout(TIMEOUT_S):
                result = fn(_client())
        except (Exception, SystemExit) as error:
            unsure = once is not None and _rpc_of(error) == once[0]
            if _transient(error) and not unsure and attempt <= len(RETRY_DELAYS):
                delay = RETRY_DELAYS[attempt - 1]
                print(f"{action}: {redact(_one_line(str(error), 160))}; retrying in {delay:g}s", file=sys.stderr)
                time.sleep(delay)
                continue
            message = _explain(error, attempt, forbidden, not_found)
            if message is None:
                raise
            if unsure:
                message += f"; it may have gone through anyway: {once[1]}"
            if _one_line(printed.getvalue()) and not isinstance(error, SystemExit):  # not the client's auth help
                message += f" [client output: {_one_line(printed.getvalue())}]"
            raise UserError(redact(f"{action} failed: {message}")) from None
        for line in printed.getvalue().splitlines():
            if line.strip():
                print(f"kaggle: {redact(line)}", file=sys.stderr)
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---------------------------------------------------------------- options


def split_options(overrides: list[str], names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """KEY=VALUE items -> (the ones named in `names`, keyed lower-case; the rest, unchanged)."""
    mine, rest = {}, []
    for key, value in config_mod.parse_overrides(overrides).items():
        if key.lower() in names:
            mine[key.lower()] = value
        else:
            rest.append(f"{key}={value}")
    return mine, rest


def _submissions_dir(args) -> Path:
    path = Path(args.config)
    return Path(config_mod.load(path).submissions_dir if path.is_file() else config_mod.Config.submissions_dir)


# ---------------------------------------------------------------- download


def verify(folder: Path) -> dict[str, int]:
    """The competition's three files, checked cheaply: exact headers and row counts. (Training parses and
    range-checks every cell again.) Returns the data rows per file."""
    expected = {"train.csv": (data_mod.TRAIN_HEADER, TRAIN_ROWS),
                "test.csv": (data_mod.TEST_HEADER, COMPETITION_ROWS),
                "sample_submission.csv": (data_mod.SAMPLE_HEADER, COMPETITION_ROWS)}
    rows = {}
    for name, (header, count) in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing (the competition data is {', '.join(data_mod.FILES)})")
        raw = path.read_bytes()
        data_mod.check_header(raw, str(path), header)
        rows[name] = raw.rstrip(b"\r\n").count(b"\n")  # every line after the header
        if rows[name] != count:
            raise UserError(f"{path}: has {rows[name]} data rows, the competition's has {count} (an incomplete download?)")
    return rows


def download_data(input_dir: Path) -> dict[str, int]:
    """`kaggle competitions download -c digit-recognizer` into input_dir: unzipped and verified in a
    staging folder, then moved to input_dir/digit-recognizer/ (the zip beside it). A download that fails
    verification stays in the staging folder, where data.locate never looks. Returns the row counts."""
    dest = input_dir / COMPETITION
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists but lacks some of {', '.join(data_mod.FILES)}; move it away and download again")
    staging = input_dir / ".download"
    archive = staging / f"{COMPETITION}.zip"
    print(f"downloading the {COMPETITION} data from Kaggle into {input_dir}/ ...", file=sys.stderr)
    _call("download", lambda api: api.competition_download_files(COMPETITION, path=str(staging), force=True, quiet=True))
    if not archive.is_file():
        got = ", ".join(p.name for p in staging.iterdir()) or "nothing"
        raise UserError(f"download: expected {archive.name} from Kaggle, got {got}")
    unpacked = staging / COMPETITION
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        data_mod.unzip(archive, unpacked)
        rows = verify(unpacked)
    except UserError as e:
        raise UserError(f"{e}; the download is kept at {archive}") from None
    if dest.exists():
        dest.rmdir()  # empty (checked above)
    os.replace(unpacked, dest)
    os.replace(archive, input_dir / archive.name)
    shutil.rmtree(staging, ignore_errors=True)
    return rows


def cmd_download(args) -> None:
    dest = data_mod.INPUT_DIR / COMPETITION
    if all((dest / name).is_file() for name in data_mod.FILES):
        print(f"{dest}: already there")
        rows = verify(dest)
    else:
        _need_credentials("make download")
        rows = download_data(data_mod.INPUT_DIR)
    print(f"{dest}: " + ", ".join(f"{name} {n} rows" for name, n in rows.items()) + " (headers and row counts verified)")


# ---------------------------------------------------------------- submit and the ledger


def newest_submission(folder: Path) -> Path:
    files = sorted(folder.glob("*.csv"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    if not files:
        raise UserError(f"no submission in {folder}/ yet: run `make train` first, or give SUB=path")
    return files[-1]


def _sidecar(path: Path) -> dict:
    """The JSON that pipeline.finish writes beside each submission (run, demo_data, oof_accuracy, sha256)."""
    return _read_json(path.with_suffix(".json"))


def _is_demo(path: Path) -> bool:
    return path.name.endswith(".DEMO.csv") or bool(_sidecar(path).get("demo_data"))


def _default_message(path: Path) -> str:
    side = _sidecar(path)
    if side.get("run") and isinstance(side.get("oof_accuracy"), (int, float)):
        return f"digitrec {Path(side['run']).name}: OOF accuracy {side['oof_accuracy']:.4%}"
    return f"digitrec {path.name}"


def _plan(path: Path, sha256: str, size: int, message: str) -> str:
    """Exactly what `submit` sends: the client's three requests, with their JSON bodies."""
    start = {"competitionName": COMPETITION, "fileName": path.name, "contentLength": size,
             "lastModifiedEpochSeconds": int(path.stat().st_mtime)}
    create = {"competitionName": COMPETITION, "blobFileTokens": "<token from step 1>", "submissionDescription": message}
    return "\n".join([
        f"  file      {path}  ({size} bytes, sha256 {sha256})",
        f"  checked   header ImageId,Label; {COMPETITION_ROWS} rows; ImageId 1..{COMPETITION_ROWS} once each; Label 0..9",
        f"  1. POST   competitions.CompetitionApiService/StartSubmissionUpload {json.dumps(start)}",
        f"  2. PUT    the file's {size} bytes to the upload URL that step 1 returns",
        f"  3. POST   competitions.CompetitionApiService/CreateSubmission {json.dumps(create)}",
    ])


def read_ledger(folder: Path) -> list[dict]:
    path = folder / LEDGER
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}: line {number} is not JSON (edit or delete that line)") from None
    return entries


def _append_ledger(folder: Path, entry: dict) -> None:
    """One JSON line per upload attempt; the file is small, so it is rewritten whole, atomically."""
    path = folder / LEDGER
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    fileio.write_text(path, before + redact(json.dumps(entry)) + "\n")


def _submit(api: Any, path: Path, message: str) -> Any:
    reply = api.competition_submit(str(path), message, COMPETITION, quiet=True)
    if reply.message == UPLOAD_FAILED:  # the PUT of the file failed; CreateSubmission was never sent
        raise UserError(f"the upload (PUT) of {path.name} to Kaggle's storage failed, so nothing was submitted; "
                        f"try again (the client said '{UPLOAD_FAILED}')")
    return reply


def cmd_submit(args) -> None:
    options, rest = split_options(args.overrides, ("sub", "msg", "dry_run"))
    if rest:
        raise UserError(f"submit takes SUB=path, MSG=text and DRY_RUN=1, not {' '.join(rest)}")
    folder = _submissions_dir(args)
    path = Path(options["sub"]) if options.get("sub") else newest_submission(folder)
    if _is_demo(path):
        raise UserError(f"{path}: made from the embedded demo set, not the competition data; it is never uploaded "
                        f"(get the real data with `make download`, then train)")
    read_submission(path)  # what Kaggle checks: header, 28000 rows, ImageId 1..28000 once each, Label 0..9
    raw = path.read_bytes()
    sha256, message = hashlib.sha256(raw).hexdigest(), options.get("msg") or _default_message(path)
    source = credential_source()
    dry_run = options.get("dry_run", "").strip().lower() in ("1", "true", "yes", "on")
    if dry_run or source is None:
        print(f"DRY RUN ({'DRY_RUN=1' if dry_run else 'no Kaggle credentials'}): nothing is sent, nothing is written; "
              f"would submit to competition '{COMPETITION}':")
        print(_plan(path, sha256, len(raw), message))
        if source is None:
            print(f"to upload for real: {no_credentials_message('make submit')}", file=sys.stderr)
        return
    print(f"submitting {path} to '{COMPETITION}' (credentials: {source})")
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "competition": COMPETITION, "file": str(path), "sha256": sha256, "bytes": len(raw), "message": message}
    try:
        reply = _call("submit", lambda api: _submit(api, path, message),
                      once=("CreateSubmission", "check `make scores` before submitting again"))
    except UserError as e:
        _append_ledger(folder, {**entry, "outcome": "failed", "ref": None, "reply": str(e)})
        raise UserError(f"{e} ({path} is kept; the attempt is in {folder / LEDGER})") from None
    _append_ledger(folder, {**entry, "outcome": "submitted", "ref": reply.ref, "reply": reply.message})
    print(f"submitted (ref {reply.ref}); Kaggle said: {redact(reply.message)}; scores: `make scores`")


# ---------------------------------------------------------------- scores


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


def cmd_scores(args) -> None:
    folder = _submissions_dir(args)
    ledger = read_ledger(folder)
    if not has_credentials():
        for entry in ledger:
            print(f"{entry['time']}  {entry['outcome']:<9}  {entry['file']}  {entry['message']}")
        raise UserError(no_credentials_message("make scores") + (f" (above: the local ledger, {folder / LEDGER})"
                                                                  if ledger else ""))
    submissions = _call("scores", lambda api: api.competition_submissions(COMPETITION, page_size=100)) or []
    by_ref = {e["ref"]: e for e in ledger if e.get("ref")}
    rows = []
    for s in submissions:
        local = by_ref.pop(s.ref, None)
        rows.append([s.date.strftime("%Y-%m-%d %H:%M") if s.date else "-", str(s.ref), s.status.name,
                     s.public_score or "-", s.file_name or "-", s.description or "",
                     f"{local['sha256'][:12]} {local['file']}" if local else "-"])
    print(_table(["date (UTC)", "ref", "status", "public", "file", "description", "ledger (sha256, local file)"], rows)
          if rows else f"no submissions to '{COMPETITION}' on this account yet")
    unmatched = [e for e in ledger if e.get("ref") is None or e.get("ref") in by_ref]
    if unmatched:
        print(f"\nledger entries ({folder / LEDGER}) with no submission on Kaggle:")
        print(_table(["time", "outcome", "file", "reply"],
                     [[e["time"], e["outcome"], e["file"], _one_line(e.get("reply") or "", 120)] for e in unmatched]))


# ---------------------------------------------------------------- kernel push and output


def _kernel_id() -> str:
    meta = KERNEL_DIR / METADATA
    if not meta.is_file():
        raise UserError(f"{meta}: not found; build the kernel first with `make kernel`")
    return fileio.read_json(meta)["id"]


def _kernel_hints(kernel_id: str) -> dict[str, str]:
    return {"forbidden": f"no access to kernel '{kernel_id}': its owner must be your Kaggle username",
            "not_found": f"Kaggle has no kernel '{kernel_id}'; push it first with `make kernel-push`"}


def cmd_kernel_push(args) -> None:
    _need_credentials("make kernel-push")
    kernel_id = _kernel_id()
    reply = _call("kernel push", lambda api: api.kernels_push(str(KERNEL_DIR)), **_kernel_hints(kernel_id),
                  once=("SaveKernel", f"look at https://www.kaggle.com/code/{kernel_id} before pushing again"))
    problems = [reply.error or ""] + [f"invalid {name}: {', '.join(values)}" for name, values in (
        ("tags", reply.invalid_tags), ("competition sources", reply.invalid_competition_sources),
        ("dataset sources", reply.invalid_dataset_sources), ("kernel sources", reply.invalid_kernel_sources)) if values]
    if any(problems):
        raise UserError(redact(f"kernel push failed: Kaggle said: {'; '.join(p for p in problems if p)}"))
    print(f"pushed {kernel_id} (version {reply.version_number}): {reply.url}\n"
          f"it runs on Kaggle now; when it is done, `make kernel-output` fetches its submission")


def cmd_kernel_output(args) -> None:
    _need_credentials("make kernel-output")
    kernel_id = _kernel_id()
    hints = _kernel_hints(kernel_id)
    status = _call("kernel status", lambda api: api.kernels_status(kernel_id), **hints)
    state = status.status.name
    if state == "ERROR":
        raise UserError(redact(f"kernel {kernel_id} failed on Kaggle: {status.failure_message or 'no message'}; "
                               f"its log: https://www.kaggle.com/code/{kernel_id}"))
    if state != "COMPLETE":
        raise UserError(f"kernel {kernel_id} is {state}, not done yet; run `make kernel-output` again later")
    dest = KERNEL_DIR / "output"
    with tempfile.TemporaryDirectory(dir=KERNEL_DIR, prefix=".output-") as tmp:
        _call("kernel output", lambda api: api.kernels_output(kernel_id, tmp, force=True, quiet=True), **hints)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for file in files:  # the client writes in place; copy through fileio so each file appears whole
            fileio.write_bytes(dest / file.relative_to(tmp), file.read_bytes())
    submission = dest / "submission.csv"
    if not submission.is_file():
        raise UserError(f"kernel {kernel_id} finished without a submission.csv (its log is in {dest}/)")
    read_submission(submission)
    print(f"{dest}/: {len(files)} file(s) from kernel {kernel_id}; {submission} checked\n"
          f"upload it with: make submit SUB={submission}")
