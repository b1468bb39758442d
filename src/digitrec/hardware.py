"""The machine a command runs on and the precision a net computes in: which device (a GPU this torch has
code for, else the CPU), the process-wide CPU settings (threads, denormals, glibc's malloc), whether bf16 is
native, and the one precision rule with its autocast.
"""
from __future__ import annotations

import functools
import logging
from contextlib import nullcontext

import torch

from .config import Config
from .errors import UserError

log = logging.getLogger(__name__)


def select_device(name: str) -> torch.device:
    """device=auto: the GPU when there is one this torch can run on, else the CPU (saying why when a GPU is
    passed over); device=cuda[:N]: that GPU, or one clear line when it is missing or unsupported."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        problem = unsupported_gpu(torch.device("cuda"))
        if problem is None:
            return torch.device("cuda")
        log.warning(f"{problem}; device=auto trains on the CPU instead")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name}: CUDA is not available on this machine (use device=cpu or auto)")
        problem = unsupported_gpu(torch.device(name))
        if problem is not None:
            raise UserError(f"device={name}: {problem}")
    return torch.device(name)


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for `arch_list` (torch.cuda.get_arch_list(): sm_75, ..., compute_90) has
    code for a GPU of this compute capability: a cubin of the same major version and no newer minor, or
    PTX (compute_XY) of this capability or older, which the driver compiles."""
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit() or len(number) < 2:
            continue
        built = (int(number[:-1]), int(number[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def unsupported_gpu(device: torch.device) -> str | None:
    """Why this torch cannot run on the GPU (None when it can). Kaggle's P100 under an image whose torch
    has no sm_60 code is the case: torch.cuda.is_available() is true, and the first CUDA op dies with
    "no kernel image is available for execution on the device"."""
    major, minor = torch.cuda.get_device_capability(device)
    arch_list = torch.cuda.get_arch_list()
    if not arch_list or runs_on((major, minor), arch_list):
        return None
    return (f"GPU {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}, sm_{major}{minor}) is not "
            f"among the architectures torch {torch.__version__} was built for ({' '.join(arch_list)}); on Kaggle "
            f"choose a T4 or an L4 (make kernel ACCEL=NvidiaTeslaT4 or ACCEL=NvidiaL4), elsewhere install a torch "
            f"built for sm_{major}{minor}")


def use_host_settings(cfg: Config) -> None:
    """The process-wide CPU settings every command applies before it trains or predicts: torch's thread
    count, denormal floats flushed to zero, and glibc's malloc told to keep freed memory. x86 computes
    denormals in microcode; Adam's moments of rarely lit pixels decay into that range, and an MLP trained
    at batch 1 took twice as long a step then (docs/studies, mlp2-batch). The change to the numbers is
    below 1e-38. torch sets the flag on the calling thread only; the intra-op threads it starts later copy
    it, those already running keep theirs, so a command calls this before its first torch op
    (tests/test_host_settings.py)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(cfg.flush_denormal)
    _keep_freed_memory()


@functools.cache
def _keep_freed_memory() -> None:
    """glibc serves every allocation above its mmap threshold with a fresh mmap and returns it on free, so
    each step's activations (up to 11 MB a tensor at BS 128) arrive as new pages the kernel must fault in
    and zero; the threshold only adapts later, and by the allocation history. Fixed thresholds (serve up to
    32 MiB from the heap, never trim it) cut a training step's page faults from 592k to 134k in 24 steps
    and its system time from 1.8 to 0.7 s (docs/performance.md). Elsewhere than glibc this does nothing."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 2**31 - 1)



@functools.cache  # asked before every forward pass; the answer never changes within a process
def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, probe, lambda: False)()
                   for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def precision(device: torch.device, amp: bool | str) -> str:
    """The one rule for what a net computes in: bf16, fp16 or fp32. amp=true follows the hardware: bf16
    where it is native (Ampere and later GPUs, AVX512-BF16/AMX CPUs); fp16 with a GradScaler on GPUs
    without bf16 (T4, V100), whose tensor cores would idle in fp32; fp32 on other CPUs, where bf16 is
    emulated and slower. amp=false is fp32; amp=bf16 or fp16 asks for that one (fp16 runs on the CPU
    too, which is how tests step the GradScaler)."""
    if amp is False:
        return "fp32"
    if amp in ("bf16", "fp16"):
        return amp
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision_name: str):
    """Autocast to the precision (the rule above); the loss and softmax are taken in fp32 by the callers."""
    if precision_name == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision_name == "bf16" else torch.float16)
