"""The Kaggle-facing commands: `make download`, `make submit`, `make scores`, `make kernel`,
`make kernel-push`, `make kernel-output`; and `find_or_fetch_data`, the one place that decides where the
data of `make train` and `make bench` comes from when there is no local copy.

Each command takes the parsed CLI args; its own KEY=VALUE settings are a small dataclass read with
settings.take. The API client itself (credentials, retries, redaction) is kaggle_client.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import competition
from . import config as config_mod
from . import data as data_mod
from . import fileio, kaggle_client, kernel, runs, settings
from .competition import NAME, TEST_ROWS
from .errors import UserError
from .submission import read_submission

LEDGER = "ledger.jsonl"
# kaggle's competition_submit returns this message instead of raising when the upload PUT failed
UPLOAD_FAILED = "Could not submit to competition"


@dataclass
class SubmitSettings:
    sub: str | None = None  # the file to upload; the newest in submissions_dir when not given
    msg: str | None = None  # its description on Kaggle; the run and its OOF accuracy when not given
    dry_run: bool = False  # only show what would be sent


@dataclass
class KernelSettings:
    id: str | None = None  # <kaggle username>/<slug>; <KAGGLE_USERNAME>/digitrec when not given
    accel: str = "NvidiaTeslaT4"  # ACCEL=: the kaggle CLI's machine_shape (kernel.ACCELERATORS), or cpu
    nproc: int | None = None  # processes to train in; None: one per GPU the kernel finds


def _config(args, items: dict[str, str] | None = None) -> config_mod.Config:
    """The config file when it is there (commands run from anywhere), else the defaults."""
    path = Path(args.config)
    return config_mod.load(path if path.is_file() else None, items)


# ---------------------------------------------------------------- data: local, else download, else demo


def find_or_fetch_data(data: str | None, fetch: bool = True) -> data_mod.Source:
    """Local data (data.locate); else a download through the Kaggle API when credentials exist; else
    the embedded demo set. fetch=False names what a fetch would give without writing anything: the
    other torchrun ranks, which read it once rank 0 has fetched it."""
    source = data_mod.locate(data)
    if source is not None:
        return source
    if kaggle_client.has_credentials():
        if fetch:
            download_data(data_mod.input_dir())
        return data_mod.Source(data_mod.competition_dir())
    folder = data_mod.write_demo(data_mod.demo_dir()) if fetch else data_mod.demo_dir()
    return data_mod.Source(folder, demo=True)


def with_data(cfg: config_mod.Config, fetch: bool = True) -> config_mod.Config:
    """cfg ready to train (find_or_fetch_data). The demo set is written into cfg.data, since data.locate
    never picks it; local or downloaded data the pipeline finds again by itself, so a rerun of the same
    command resumes the same run."""
    source = find_or_fetch_data(cfg.data, fetch)
    return dataclasses.replace(cfg, data=str(source.path)) if cfg.data is None and source.demo else cfg


def verify(folder: Path) -> dict[str, int]:
    """The competition's three files, checked cheaply: exact headers and row counts. (Training parses and
    range-checks every cell again.) Returns the data rows per file."""
    expected = {"train.csv": (competition.TRAIN_HEADER, competition.TRAIN_ROWS),
                "test.csv": (competition.TEST_HEADER, TEST_ROWS),
                "sample_submission.csv": (competition.SAMPLE_HEADER, TEST_ROWS)}
    rows = {}
    for name, (header, count) in expected.items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"{path}: missing (the competition data is {', '.join(competition.FILES)})")
        raw = path.read_bytes()
        data_mod.check_header(raw, str(path), header)
        rows[name] = raw.rstrip(b"\r\n").count(b"\n")  # every line after the header
        if rows[name] != count:
            raise UserError(f"{path}: has {rows[name]} data rows, the competition's has {count} "
                            f"(an incomplete download?)")
    return rows


def download_data(input_dir: Path) -> dict[str, int]:
    """`kaggle competitions download -c digit-recognizer` into input_dir: unzipped and verified in a
    staging folder, then moved to input_dir/digit-recognizer/ (the zip beside it). A download that fails
    verification stays in the staging folder, where data.locate never looks. Returns the row counts."""
    dest = input_dir / NAME
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"{dest}: exists but lacks some of {', '.join(competition.FILES)}; move it away and "
                        f"download again")
    staging = input_dir / ".download"
    archive = staging / f"{NAME}.zip"
    print(f"downloading the {NAME} data from Kaggle into {input_dir}/ ...", file=sys.stderr)
    kaggle_client.call("download", lambda api: api.competition_download_files(NAME, path=str(staging), force=True,
                                                                              quiet=True))
    if not archive.is_file():
        got = ", ".join(p.name for p in staging.iterdir()) or "nothing"
        raise UserError(f"download: expected {archive.name} from Kaggle, got {got}")
    unpacked = staging / NAME
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
    dest = data_mod.competition_dir()
    if all((dest / name).is_file() for name in competition.FILES):
        print(f"{dest}: already there")
        rows = verify(dest)
    else:
        kaggle_client.need_credentials("make download")
        rows = download_data(data_mod.input_dir())
    print(f"{dest}: " + ", ".join(f"{name} {n} rows" for name, n in rows.items())
          + " (headers and row counts verified)")


# ---------------------------------------------------------------- submit and the ledger


def _created(path: Path) -> str:
    """When a submission was made: its sidecar's creation record (UTC, ISO 8601); a file without one (made
    by hand, or before sidecars recorded it) by its modification time, in the same form."""
    created = _sidecar(path).get("created")
    if isinstance(created, str):
        return created
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc).isoformat(timespec="microseconds")


def newest_submission(folder: Path) -> Path:
    """The submission made last, by creation record: a file rewritten later (touched, copied back, or a
    re-prediction's own file) does not jump the queue."""
    files = sorted(folder.glob("*.csv"), key=lambda p: (_created(p), p.name))
    if not files:
        raise UserError(f"no submission in {folder}/ yet: run `make train` first, or give SUB=path")
    return files[-1]


def _describe_submission(path: Path) -> str:
    """Which run and settings a submission comes from, as its sidecar says."""
    side = _sidecar(path)
    if not side.get("run"):
        return f"{path} (no record of the run that made it)"
    parts = [f"run {Path(side['run']).name}"]
    if side.get("prediction"):
        parts.append(f"re-predicted in {Path(side['prediction']).name}")
    if "tta" in side:  # None: the members predict some with TTA, some without
        parts.append("TTA as each member sets it" if side["tta"] is None else f"TTA {'on' if side['tta'] else 'off'}")
    if isinstance(side.get("oof_accuracy"), (int, float)):
        parts.append(f"OOF {side['oof_accuracy']:.4%}")
    if side.get("submission_from"):
        parts.append(f"from the {side['submission_from']}")
    if side.get("created"):
        parts.append(f"made {side['created'][:19]} UTC")
    return f"{path}: {', '.join(parts)}"


def _sidecar(path: Path) -> dict:
    """The JSON that outcome.finish writes beside each submission (run, demo_data, oof_accuracy, sha256)."""
    return fileio.read_json_object(path.with_suffix(".json"))


def _is_demo(path: Path) -> bool:
    return path.name.endswith(".DEMO.csv") or bool(_sidecar(path).get("demo_data"))


def _default_message(path: Path) -> str:
    side = _sidecar(path)
    if side.get("run") and isinstance(side.get("oof_accuracy"), (int, float)):
        return f"digitrec {Path(side['run']).name}: OOF accuracy {side['oof_accuracy']:.4%}"
    return f"digitrec {path.name}"


def _plan(path: Path, sha256: str, size: int, message: str) -> str:
    """Exactly what `submit` sends: the client's three requests, with their JSON bodies."""
    start = {"competitionName": NAME, "fileName": path.name, "contentLength": size,
             "lastModifiedEpochSeconds": int(path.stat().st_mtime)}
    create = {"competitionName": NAME, "blobFileTokens": "<token from step 1>", "submissionDescription": message}
    return "\n".join([
        f"  file      {path}  ({size} bytes, sha256 {sha256})",
        f"  checked   header ImageId,Label; {TEST_ROWS} rows; ImageId 1..{TEST_ROWS} once each; Label 0..9",
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
    fileio.write_text(path, before + kaggle_client.redact(json.dumps(entry)) + "\n")


def _submit(api: Any, path: Path, message: str) -> Any:
    reply = api.competition_submit(str(path), message, NAME, quiet=True)
    if reply.message == UPLOAD_FAILED:  # the PUT of the file failed; CreateSubmission was never sent
        raise UserError(f"the upload (PUT) of {path.name} to Kaggle's storage failed, so nothing was submitted; "
                        f"try again (the client said '{UPLOAD_FAILED}')")
    return reply


def cmd_submit(args) -> None:
    items = settings.parse_items(args.overrides)
    options = settings.take(SubmitSettings, items)
    if items:
        raise UserError(f"submit takes SUB=path, MSG=text and DRY_RUN=1, not "
                        f"{' '.join(f'{key}={value}' for key, value in items.items())}")
    folder = runs.submissions_root(_config(args))
    path = Path(options.sub) if options.sub else newest_submission(folder)
    print(f"{'the newest submission' if not options.sub else 'SUB'}: {_describe_submission(path)}")
    if _is_demo(path):
        raise UserError(f"{path}: made from the embedded demo set, not the competition data; it is never uploaded "
                        f"(get the real data with `make download`, then train)")
    read_submission(path)  # what Kaggle checks: header, 28000 rows, ImageId 1..28000 once each, Label 0..9
    raw = path.read_bytes()
    sha256, message = hashlib.sha256(raw).hexdigest(), options.msg or _default_message(path)
    source = kaggle_client.credential_source()
    if options.dry_run or source is None:
        print(f"DRY RUN ({'DRY_RUN=1' if options.dry_run else 'no Kaggle credentials'}): nothing is sent, nothing "
              f"is written; would submit to competition '{NAME}':")
        print(_plan(path, sha256, len(raw), message))
        if source is None:
            print(f"to upload for real: {kaggle_client.no_credentials_message('make submit')}", file=sys.stderr)
        return
    print(f"submitting {path} to '{NAME}' (credentials: {source})")
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "competition": NAME, "file": str(path), "sha256": sha256, "bytes": len(raw), "message": message}
    try:
        reply = kaggle_client.call("submit", lambda api: _submit(api, path, message),
                                   once=("CreateSubmission", "check `make scores` before submitting again"))
    except UserError as e:
        _append_ledger(folder, {**entry, "outcome": "failed", "ref": None, "reply": str(e)})
        raise UserError(f"{e} ({path} is kept; the attempt is in {folder / LEDGER})") from None
    _append_ledger(folder, {**entry, "outcome": "submitted", "ref": reply.ref, "reply": reply.message})
    print(f"submitted (ref {reply.ref}); Kaggle said: {kaggle_client.redact(reply.message)}; scores: `make scores`")


# ---------------------------------------------------------------- scores


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows])


def cmd_scores(args) -> None:
    folder = runs.submissions_root(_config(args))
    ledger = read_ledger(folder)
    if not kaggle_client.has_credentials():
        for entry in ledger:
            print(f"{entry['time']}  {entry['outcome']:<9}  {entry['file']}  {entry['message']}")
        raise UserError(kaggle_client.no_credentials_message("make scores") +
                        (f" (above: the local ledger, {folder / LEDGER})" if ledger else ""))
    submissions = kaggle_client.call("scores", lambda api: api.competition_submissions(NAME, page_size=100)) or []
    by_ref = {e["ref"]: e for e in ledger if e.get("ref")}
    rows = []
    for s in submissions:
        local = by_ref.pop(s.ref, None)
        rows.append([s.date.strftime("%Y-%m-%d %H:%M") if s.date else "-", str(s.ref), s.status.name,
                     s.public_score or "-", s.file_name or "-", s.description or "",
                     f"{local['sha256'][:12]} {local['file']}" if local else "-"])
    print(_table(["date (UTC)", "ref", "status", "public", "file", "description", "ledger (sha256, local file)"], rows)
          if rows else f"no submissions to '{NAME}' on this account yet")
    unmatched = [e for e in ledger if e.get("ref") is None or e.get("ref") in by_ref]
    if unmatched:
        print(f"\nledger entries ({folder / LEDGER}) with no submission on Kaggle:")
        print(_table(["time", "outcome", "file", "reply"],
                     [[e["time"], e["outcome"], e["file"], kaggle_client.one_line(e.get("reply") or "", 120)]
                      for e in unmatched]))


# ---------------------------------------------------------------- kernel: build, push, output


def cmd_kernel(args) -> None:
    items = settings.parse_items(args.overrides)
    options = settings.take(KernelSettings, items)
    cfg = _config(args, items)
    user = kaggle_client.kaggle_username()
    kernel_id = options.id or (f"{user}/digitrec" if user else None)
    if kernel_id is None:
        raise UserError("the kernel's id needs your Kaggle username: set KAGGLE_USERNAME, or "
                        "`make kernel ARGS=id=<username>/digitrec`")
    if cfg.budget is not None and cfg.budget_s > kernel.MAX_BUDGET_S:
        raise UserError(f"BUDGET={cfg.budget}: a Kaggle kernel stops after 12 h, its start-up and output included; "
                        f"give at most BUDGET=11h30m")
    out = kernel.build(competition.kernel_dir(), cfg, kernel_id, options.accel, options.nproc)
    accel = kernel.accelerator(options.accel)
    work = f"BUDGET={cfg.budget}, planned on the kernel's machine" if cfg.budget else \
        f"{cfg.epochs} epochs x {cfg.folds} folds"
    print(f"{out}/: {competition.METADATA} (id {kernel_id}, {accel}: {kernel.ACCELERATORS[accel]}; internet off, "
          f"competition {NAME}) and {kernel.SCRIPT} ({(out / kernel.SCRIPT).stat().st_size} bytes, {work}); push it "
          f"with `make kernel-push`")


def _kernel_id() -> str:
    meta = competition.kernel_dir() / competition.METADATA
    if not meta.is_file():
        raise UserError(f"{meta}: not found; build the kernel first with `make kernel`")
    return fileio.read_json(meta)["id"]


def _kernel_hints(kernel_id: str) -> dict[str, str]:
    return {"forbidden": f"no access to kernel '{kernel_id}': its owner must be your Kaggle username",
            "not_found": f"Kaggle has no kernel '{kernel_id}'; push it first with `make kernel-push`"}


def cmd_kernel_push(args) -> None:
    kaggle_client.need_credentials("make kernel-push")
    kernel_id = _kernel_id()
    again = f"look at https://www.kaggle.com/code/{kernel_id} before pushing again"
    reply = kaggle_client.call("kernel push", lambda api: api.kernels_push(str(competition.kernel_dir())),
                               **_kernel_hints(kernel_id), once=("SaveKernel", again))
    problems = [reply.error or ""] + [f"invalid {name}: {', '.join(values)}" for name, values in (
        ("tags", reply.invalid_tags), ("competition sources", reply.invalid_competition_sources),
        ("dataset sources", reply.invalid_dataset_sources), ("kernel sources", reply.invalid_kernel_sources)) if values]
    if any(problems):
        raise UserError(kaggle_client.redact(f"kernel push failed: Kaggle said: {'; '.join(p for p in problems if p)}"))
    print(f"pushed {kernel_id} (version {reply.version_number}): {reply.url}\n"
          f"it runs on Kaggle now; when it is done, `make kernel-output` fetches its submission")


def cmd_kernel_output(args) -> None:
    kaggle_client.need_credentials("make kernel-output")
    kernel_id = _kernel_id()
    hints = _kernel_hints(kernel_id)
    status = kaggle_client.call("kernel status", lambda api: api.kernels_status(kernel_id), **hints)
    state = status.status.name
    if state == "ERROR":
        raise UserError(kaggle_client.redact(f"kernel {kernel_id} failed on Kaggle: "
                                             f"{status.failure_message or 'no message'}; "
                                             f"its log: https://www.kaggle.com/code/{kernel_id}"))
    if state != "COMPLETE":
        raise UserError(f"kernel {kernel_id} is {state}, not done yet; run `make kernel-output` again later")
    dest = competition.kernel_dir() / "output"
    with tempfile.TemporaryDirectory(dir=competition.kernel_dir(), prefix=".output-") as tmp:
        kaggle_client.call("kernel output", lambda api: api.kernels_output(kernel_id, tmp, force=True, quiet=True),
                           **hints)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        for file in files:  # the client writes in place; copy through fileio so each file appears whole
            fileio.write_bytes(dest / file.relative_to(tmp), file.read_bytes())
    submission = dest / "submission.csv"
    if not submission.is_file():
        raise UserError(f"kernel {kernel_id} finished without a submission.csv (its log is in {dest}/)")
    read_submission(submission)
    print(f"{dest}/: {len(files)} file(s) from kernel {kernel_id}; {submission} checked\n"
          f"upload it with: make submit SUB={submission}")
