"""The package's log: INFO lines plain on stdout, warnings on stderr with their level, and under torchrun
only the ranks that should speak."""
from __future__ import annotations

import logging

import pytest

from digitrec import logs


def test_info_lines_are_printed_as_written(capsys: pytest.CaptureFixture) -> None:
    logs.setup()
    logs.setup()  # a second call (the CLI's, then an entry point's) adds nothing: each line once
    log = logging.getLogger("digitrec.pipeline")
    log.info("fold 0 epoch  1/1  train loss 0.5")
    log.warning("careful")
    out, err = capsys.readouterr()
    assert out == "fold 0 epoch  1/1  train loss 0.5\n" and err == "warning: careful\n"


def test_ranks_other_than_0_mark_their_lines_or_keep_quiet(capsys: pytest.CaptureFixture) -> None:
    log = logging.getLogger("digitrec.engine")
    try:
        logs.for_rank(1, own_nets=True)  # parallel=folds: its own nets' lines, marked
        log.info("fold 1: val accuracy")
        logs.for_rank(1, own_nets=False)  # data-parallel: rank 0 speaks for all
        log.info("fold 0 epoch  1/2")
        log.warning("disk almost full")
    finally:
        logs.for_rank(0, own_nets=False)
    log.info("rank 0 again")
    out, err = capsys.readouterr()
    assert out == "[rank 1] fold 1: val accuracy\nrank 0 again\n"
    assert err == "[rank 1] warning: disk almost full\n"
