"""Augmentation on the whole batch, on the training device: a random rotation, scale and shift per image.

One affine_grid + grid_sample call warps the batch; torchvision's v2.RandomAffine would draw a single
transform for the whole batch, and a per-sample PIL path is what this pipeline exists to avoid.
No flips: a mirrored 2 is not a 2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, rotate_deg: float, scale: float, shift: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """images: (B, C, H, W) float. rotate_deg: +-degrees; scale: +-fraction; shift: +-fraction of the side."""
    if rotate_deg == 0 and scale == 0 and shift == 0:
        return images
    n, device = images.shape[0], images.device

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator, device=device) * 2 - 1)

    angle = uniform(n) * math.radians(rotate_deg)
    inv_zoom = 1.0 / (1.0 + uniform(n) * scale)  # the grid maps output -> input, hence the inverse
    theta = torch.empty(n, 2, 3, device=device)
    theta[:, 0, 0] = torch.cos(angle) * inv_zoom
    theta[:, 0, 1] = -torch.sin(angle) * inv_zoom
    theta[:, 1, 0] = torch.sin(angle) * inv_zoom
    theta[:, 1, 1] = torch.cos(angle) * inv_zoom
    theta[:, :, 2] = uniform(n, 2) * (2 * shift)  # grid coordinates span [-1, 1]: a side is 2 units
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def tta_shifts(images: torch.Tensor) -> list[torch.Tensor]:
    """Flip-free test-time augmentation: the image and four one-pixel shifts."""
    views = [images]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        views.append(torch.roll(images, shifts=(dy, dx), dims=(2, 3)))
    return views
