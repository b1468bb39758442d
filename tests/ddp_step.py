"""A few optimizer steps of engine.train_net on fixed synthetic digits, for test_distributed: run with
plain python (one process) or under torchrun (each rank takes its shard). Writes OUT/weights.pt.

    python ddp_step.py OUT BS [ACCUM]"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from digitrec import config, distributed, engine


def main(out: str, batch_size: int, accum: int) -> None:
    torch.set_num_threads(1)
    # augmentation and dropout off (both draw per-rank random numbers), fp32, no EMA: the raw weights. Plain
    # SGD at a small lr: Adam, or a large lr, would amplify the last-bit differences of summing in another
    # order into visible ones, and the comparison would test chaos rather than the sharding.
    cfg = config.load(None, dict(model="gn_cnn", width=8, dropout=0.0, rotate=0.0, scale=0.0, shift=0.0,
                                 amp=False, ema=False, epochs=1, warmup_epochs=0.0, batch_size=batch_size, accum=accum, optimizer="sgd", lr=0.02,
                                 lr_scaling="none", weight_decay=0.0, tta=False, progress=False))
    device = torch.device("cpu")
    ranks = distributed.start(device, timeout_minutes=2)
    cfg = config.validate(type(cfg)(**{**cfg.to_dict(), "world_size": ranks.world}))
    generator = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (512, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (512,), generator=generator)
    data = engine.FoldData(images, labels, torch.arange(448), torch.arange(448, 512), images[:16])
    engine.train_net(cfg, data, seed=3, label="fold 0", unit_dir=Path(out), device=device, ranks=ranks)
    distributed.barrier(ranks)  # as pipeline.train: nobody leaves while rank 0 writes
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
