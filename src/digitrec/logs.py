"""What the package says while it works: Python logging under the "digitrec" logger, printed as plain lines.

Modules log through `logging.getLogger(__name__)`. setup() gives the package logger one handler that
writes through tqdm.write, so a line never cuts through a progress bar: INFO lines on stdout exactly as
written (they are the program's output, read by people and by the tests), WARNING and above on stderr
with their level. Under torchrun for_rank() decides what a rank other than 0 prints.
"""
from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

PACKAGE = logging.getLogger("digitrec")


class _TqdmHandler(logging.Handler):
    prefix = ""  # "[rank r] " on a fold-parallel rank other than 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # the stream of the moment, not of setup(): a redirection made later (pytest's capture) sees it
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            tqdm.write(self.prefix + self.format(record), file=stream)
        except Exception:  # logging's rule: a failed write must not stop the program
            self.handleError(record)


class _Plain(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


def _handler() -> _TqdmHandler | None:
    return next((h for h in PACKAGE.handlers if isinstance(h, _TqdmHandler)), None)


def setup() -> None:
    """Attach the handler once; later calls change nothing. cli.main calls it, and so do the entry points
    (pipeline.train and the evaluate, sweep and bench commands) for callers that skip the CLI."""
    if _handler() is not None:
        return
    handler = _TqdmHandler()
    handler.setFormatter(_Plain())
    PACKAGE.addHandler(handler)
    PACKAGE.setLevel(logging.INFO)
    PACKAGE.propagate = False  # a root handler (basicConfig) would print every line twice


def for_rank(rank: int, own_nets: bool) -> None:
    """Rank 0 speaks as usual. Another rank marks its lines "[rank r]" when it trains nets of its own
    (parallel=folds), and otherwise (data-parallel, where rank 0 speaks for all) prints only warnings."""
    setup()
    handler = _handler()
    handler.prefix = f"[rank {rank}] " if rank else ""
    handler.setLevel(logging.NOTSET if rank == 0 or own_nets else logging.WARNING)
