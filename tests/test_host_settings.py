"""The process-wide CPU settings every command applies (hardware.use_host_settings)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import SRC
from digitrec.config import Config
from digitrec.hardware import use_host_settings

DENORMAL = 1e-40  # below float32's smallest normal number, 1.18e-38

# a fresh process: host settings first, then an op large enough for torch to split it over 2 threads; the
# tensor is made from bit patterns (1000 is a denormal float32), not by float maths that would flush it
ON_EVERY_THREAD = """
import torch
from digitrec.config import Config
from digitrec.hardware import use_host_settings
use_host_settings(Config(threads=2, flush_denormal=True))
denormals = torch.full((4_000_000,), 1000, dtype=torch.int32).view(torch.float32)
print(int(denormals.mul(1.0).count_nonzero()))
"""


@pytest.fixture
def restore_host_settings():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_denormals_are_flushed_to_zero_unless_the_config_turns_it_off(restore_host_settings) -> None:
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    use_host_settings(Config(flush_denormal=True))
    assert torch.tensor([DENORMAL]).mul(1.0).item() == 0.0
    use_host_settings(Config(flush_denormal=False))
    assert torch.tensor([DENORMAL]).mul(1.0).item() == pytest.approx(DENORMAL, rel=0.01)


def test_denormals_are_flushed_on_the_threads_torch_starts_afterwards() -> None:
    # torch sets the flag on the calling thread only: applied after the thread pool exists, half of this
    # product (the other thread's half) stayed denormal
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    result = subprocess.run([sys.executable, "-c", ON_EVERY_THREAD], env={"PYTHONPATH": str(SRC)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "0"


def test_the_thread_count_follows_the_config(restore_host_settings) -> None:
    use_host_settings(Config(threads=1))
    assert torch.get_num_threads() == 1
