"""Augmentation on the whole batch, on the training device: a random rotation, scale and shift per image,
and optionally an elastic distortion (Simard et al. 2003: a smooth random displacement of the pixels, the
augmentation behind the best plain-CNN MNIST results).

One affine_grid (+ the elastic displacement) and one grid_sample call warp the batch; torchvision's
v2.RandomAffine and v2.ElasticTransform draw a single transform for the whole batch, and a per-sample PIL
path is what this pipeline exists to avoid. No flips: a mirrored 2 is not a 2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# the elastic field's control points per side: a 28-pixel side gets one every 9 pixels, so the field bends
# strokes (Simard's Gaussian of sigma 4 px smooths about as much) without tearing them
ELASTIC_LATTICE = 4


def _affine(images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor,
            displacement: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (radians), zoom (factor) and shift (grid units, a side is 2) each image of the batch:
    angle and zoom are (B,), shift is (B, 2); displacement (B, H, W, 2), in grid units, is added to the
    sampling grid. One affine_grid + grid_sample for the whole batch."""
    inv_zoom = 1.0 / zoom  # the grid maps output -> input, hence the inverse
    theta = torch.empty(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0] = torch.cos(angle) * inv_zoom
    theta[:, 0, 1] = -torch.sin(angle) * inv_zoom
    theta[:, 1, 0] = torch.sin(angle) * inv_zoom
    theta[:, 1, 1] = torch.cos(angle) * inv_zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if displacement is not None:
        grid = grid + displacement
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, rotate_deg: float, scale: float, shift: float, elastic_px: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """images: (B, C, H, W) float. rotate_deg: +-degrees; scale: +-fraction; shift: +-fraction of the side;
    elastic_px: the largest displacement of the elastic field's control points, in pixels (0: none)."""
    if rotate_deg == 0 and scale == 0 and shift == 0 and elastic_px == 0:
        return images
    n, device = images.shape[0], images.device

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator, device=device) * 2 - 1)

    angle = uniform(n) * math.radians(rotate_deg)
    zoom = 1.0 + uniform(n) * scale
    displacement = None
    if elastic_px:
        # uniform control-point offsets, bicubically interpolated into a smooth per-pixel field; a side of
        # the image spans 2 grid units, so a pixel is 2 / side of them
        lattice = uniform(n, 2, ELASTIC_LATTICE, ELASTIC_LATTICE)
        field = F.interpolate(lattice, size=images.shape[-2:], mode="bicubic", align_corners=True)
        displacement = field.permute(0, 2, 3, 1) * (2 * elastic_px / images.shape[-1])
    return _affine(images, angle, zoom, uniform(n, 2) * (2 * shift), displacement)


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """Flip-free test-time augmentation, nine views: the image, four one-pixel shifts, +-5 degrees and
    +-5% zoom (mild versions of the training augmentation; docs/results.md has what they measured)."""
    views = [images]
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        views.append(torch.roll(images, shifts=(dy, dx), dims=(2, 3)))
    n, device = images.shape[0], images.device
    still, centred = torch.zeros(n, device=device), torch.zeros(n, 2, device=device)
    for degrees in (5.0, -5.0):
        views.append(_affine(images, still + math.radians(degrees), still + 1.0, centred))
    for zoom in (1.05, 0.95):
        views.append(_affine(images, still, still + zoom, centred))
    return views
