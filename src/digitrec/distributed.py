"""Runs over several processes, started by torchrun (`make train NPROC=2`): PyTorch's own machinery only.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in every process it starts; without them the run is one
process and nothing here does anything. Two ways to share the work (config `parallel`):

  data   DistributedDataParallel: every net is trained by all ranks together; each rank takes a disjoint
         shard of every optimizer window (engine.train_step), gradients are all-reduced (NCCL on GPUs,
         gloo on CPUs), and the effective batch is BS x ACCUM x WORLD_SIZE.
  folds  no gradient traffic: the run's nets (fold x member, then the refit) are dealt out to the ranks,
         each trains its own on one device, and rank 0 builds the submission once every net is done. The
         ranks exchange only small objects, over gloo, so several may share one GPU (NPROC=4 on one GPU).

Only rank 0 creates the run folder, logs, draws progress bars and writes the files of a data-parallel
net. When a rank dies, torchrun stops the others (SIGTERM, answered here with one line) and names the
failed rank; the collectives also time out after `timeout_minutes`, so a lost peer never hangs a job.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks that train one net together (world 1: alone)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ALONE = Ranks()


def launched() -> Ranks:
    """RANK and WORLD_SIZE as torchrun set them (rank 0 of 1 when started without torchrun)."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        raise UserError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                        "must be integers (torchrun sets them)") from None


def device_for(name: str, ranks: Ranks, parallel: str = "data") -> str:
    """Each process on a multi-GPU machine takes the GPU of its LOCAL_RANK; with more fold-parallel ranks than
    GPUs, ranks share them in turn. Data-parallel ranks need a GPU each: NCCL refuses two on one device."""
    if ranks.world > 1 and name == "cuda" and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        local = int(os.environ.get("LOCAL_RANK", 0))
        if parallel == "data" and int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world)) > gpus:
            raise UserError(f"{os.environ.get('LOCAL_WORLD_SIZE', ranks.world)} data-parallel ranks on this machine "
                            f"need a GPU each, and it has {gpus}: give NPROC={gpus}, or ARGS=parallel=folds (ranks "
                            f"train whole nets and may share a GPU)")
        return f"cuda:{local % gpus}"
    return name


RESUME_HINT = "finished nets and epochs are saved, rerun the same command to resume"


def _stopped_by_peer(signum: int, _frame) -> None:
    print(f"error: rank {os.environ.get('RANK')}: stopped (signal {signum}) because another rank of the job "
          f"failed; {RESUME_HINT}", file=sys.stderr)
    sys.exit(128 + signum)


@contextlib.contextmanager
def peers_watched(ranks: Ranks):
    """A collective that fails (a peer died: gloo's "Connection reset by peer", NCCL's errors, a timeout)
    becomes one clear line instead of a backend traceback."""
    try:
        yield
    except RuntimeError as e:  # torch.distributed.DistError is a RuntimeError too
        if ranks.world == 1:
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"rank {ranks.rank}: a collective with the other ranks failed, most likely because "
                        f"another rank died ({first}); {RESUME_HINT}") from e


def backend(device: torch.device, parallel: str) -> str:
    """NCCL for data-parallel ranks on GPUs (their gradients); gloo for everything else: CPUs, and fold-parallel
    ranks, whose few small messages need no NCCL, and which NCCL would refuse to put two on one GPU."""
    return "nccl" if device.type == "cuda" and parallel == "data" else "gloo"


def start(device: torch.device, timeout_minutes: float, parallel: str = "data") -> Ranks:
    """Join the process group (a no-op for one process), over backend()."""
    ranks = launched()
    if ranks.world == 1:
        return ranks
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend(device, parallel), timeout=datetime.timedelta(minutes=timeout_minutes))
    signal.signal(signal.SIGTERM, _stopped_by_peer)
    return ranks


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(value, ranks: Ranks):
    """Rank 0's value, on every rank (the run folder, say)."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, ranks: Ranks) -> list:
    """Every rank's value, in rank order, on every rank."""
    if ranks.world == 1:
        return [value]
    out = [None] * ranks.world
    dist.all_gather_object(out, value)
    return out


def sum_(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise sum over the ranks (in place)."""
    if ranks.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()
