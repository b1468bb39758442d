"""The Kaggle API client: where credentials are, one bounded call with retries, and every credential
blanked out of what comes back. The commands that use it are in commands.py.

The `kaggle` package (2.2.x) authenticates when it is imported, so it is imported only inside `_client`,
and only after `credential_source()` found something to authenticate with. Every call goes through
`call`, which bounds it (a socket timeout; a few retries with backoff for 5xx answers and dropped
connections) and turns each failure into one UserError line with every credential blanked out.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import competition
from .errors import UserError
from .fileio import read_json_object

RULES_URL = f"https://www.kaggle.com/competitions/{competition.NAME}/rules"
TOKEN_URL = "https://www.kaggle.com/settings/api"
TIMEOUT_S = 60.0  # for each connect and each read on a socket, not for a whole transfer
RETRY_DELAYS = (2.0, 5.0, 10.0)  # seconds before the 2nd, 3rd and 4th attempt of a call
FORBIDDEN = f"accept the competition rules first at {RULES_URL} (join the competition), then retry"
NOT_FOUND = f"Kaggle does not know the competition '{competition.NAME}'"

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


def _token_files() -> list[Path]:
    return [Path("~/.kaggle/access_token").expanduser(), Path("~/.kaggle/access_token.txt").expanduser()]


def _oauth_file() -> Path:
    return Path("~/.kaggle/credentials.json").expanduser()  # written by `kaggle auth login`


def credential_source() -> str | None:
    """Where the client will find credentials, checked in its own order; None when there are none, and
    always inside a Kaggle kernel, which runs offline and uploads nothing."""
    if competition.in_kernel():
        return None
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for path in _token_files():
        if _read_text(path):
            return str(path)
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME + KAGGLE_KEY"
    legacy = read_json_object(_config_dir() / "kaggle.json")
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


def need_credentials(what: str) -> str:
    """Where the credentials are; a UserError saying where they were looked for when there are none."""
    source = credential_source()
    if source is None:
        raise UserError(no_credentials_message(what))
    return source


def kaggle_username() -> str | None:
    return os.environ.get("KAGGLE_USERNAME") or read_json_object(_config_dir() / "kaggle.json").get("username")


def _secrets() -> list[str]:
    """Every credential this machine holds for Kaggle, in each form it could be echoed back in."""
    token = os.environ.get("KAGGLE_API_TOKEN", "")
    legacy = read_json_object(_config_dir() / "kaggle.json")
    key = os.environ.get("KAGGLE_KEY") or str(legacy.get("key", ""))
    values = [token, key, *(_read_text(p) for p in _token_files())]
    if token and Path(token).is_file():  # KAGGLE_API_TOKEN may name a file holding the token
        values.append(_read_text(Path(token)))
    values += [str(v) for k, v in read_json_object(_oauth_file()).items()
               if "token" in k.lower() or "secret" in k.lower()]
    user = kaggle_username()
    if user and key:  # the HTTP Basic form the client sends
        values.append(base64.b64encode(f"{user}:{key}".encode()).decode())
    # short values are left alone: blanking a 3-letter string everywhere would garble messages
    return sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "[redacted]")
    return text


# ---------------------------------------------------------------- one bounded, explained call


def one_line(text: str, limit: int = 300) -> str:
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
        said = f" (Kaggle said: {one_line(str(error))})"
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
        return f"could not reach Kaggle after {attempts} attempt(s) ({one_line(str(error), 160)})"
    if isinstance(error, ValueError):  # the client's own checks (kernel metadata, kernel ids)
        return one_line(str(error))
    return None


def call(action: str, fn: Callable[[Any], T], *, forbidden: str = FORBIDDEN, not_found: str = NOT_FOUND,
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
                print(f"{action}: {redact(one_line(str(error), 160))}; retrying in {delay:g}s", file=sys.stderr)
                time.sleep(delay)
                continue
            message = _explain(error, attempt, forbidden, not_found)
            if message is None:
                raise
            if unsure:
                message += f"; it may have gone through anyway: {once[1]}"
            if one_line(printed.getvalue()) and not isinstance(error, SystemExit):  # not the client's auth help
                message += f" [client output: {one_line(printed.getvalue())}]"
            raise UserError(redact(f"{action} failed: {message}")) from None
        for line in printed.getvalue().splitlines():
            if line.strip():
                print(f"kaggle: {redact(line)}", file=sys.stderr)
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")
