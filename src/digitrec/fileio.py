"""Every file the pipeline writes goes through here: to a temp file beside the target, then renamed.

A kill at any moment leaves either the old file or the new one, never half of one.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it; done once, at import
    os.umask(umask)
    return umask


# the mode open() would give a new file; mkstemp's own 0o600 would hide submissions from other users
FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: str | os.PathLike, data: bytes, replace: bool = True) -> Path | None:
    """The file, whole; with replace=False only where there is none yet (None where there was): of processes that
    decide at once, the first one's decision stands."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails where the file is there: an atomic "create if absent"
            Path(tmp).unlink()
    except FileExistsError:
        Path(tmp).unlink(missing_ok=True)
        return None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)
    return path


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (a laptop whose battery dies right after a save keeps it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, replace: bool = True) -> Path | None:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"), replace)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save to memory, then atomically to disk; only tensors and plain containers belong in obj
    so that it loads back with weights_only=True."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def read_torch(path: str | os.PathLike) -> Any:
    """A checkpoint or weights file; weights_only=True refuses a file that carries pickled code."""
    import pickle

    from .errors import UserError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load: not a plain tensors-only file ({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]}); delete it to retrain") from None


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from a file that may be missing or hand-edited (kaggle.json, a submission's sidecar);
    {} when it is absent, unreadable or not an object."""
    try:
        value = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
