"""The process-wide CPU settings every command applies (engine.use_host_settings)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from digitrec.config import Config
from digitrec.engine import use_host_settings

DENORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38


@pytest.fixture
def restore_host_settings():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_denormals_are_flushed_to_zero_unless_the_config_turns_it_off(restore_host_settings) -> None:
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    use_host_settings(dataclasses.replace(Config(), flush_denormal=True))
    assert torch.tensor([DENORMAL]).mul(1.0).item() == 0.0
    use_host_settings(dataclasses.replace(Config(), flush_denormal=False))
    assert torch.tensor([DENORMAL]).mul(1.0).item() == pytest.approx(DENORMAL, rel=0.01)


def test_the_thread_count_follows_the_config(restore_host_settings) -> None:
    use_host_settings(dataclasses.replace(Config(), threads=1))
    assert torch.get_num_threads() == 1
