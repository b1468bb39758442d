"""The batched augmentation, the test-time views and the model's dropout do what their docstrings say."""
from __future__ import annotations

import torch

from digitrec.augment import random_affine, tta_views
from digitrec.models import Dropout


def disk(radius: float) -> torch.Tensor:
    """A centred filled disk, (1, 1, 28, 28): unchanged by rotation about the centre, grown by zoom."""
    coords = torch.arange(28) - 13.5
    return ((coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2).float()[None, None]


def test_random_affine_draws_one_transform_per_image() -> None:
    batch = disk(6).repeat(8, 1, 1, 1)
    assert random_affine(batch, 0, 0, 0) is batch
    moved = random_affine(batch, 10, 0.1, 0.1, generator=torch.Generator().manual_seed(0))
    assert moved.shape == batch.shape
    # identical inputs, different outputs: each image got its own rotation, scale and shift
    assert all(not torch.allclose(moved[0], moved[i]) for i in range(1, 8))
    again = random_affine(batch, 10, 0.1, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved, again)


def test_elastic_distortion_bends_each_image_its_own_way_within_its_bound() -> None:
    # images whose two channels hold each pixel's own x and y: warped, they show where each pixel came from
    coords = torch.arange(28, dtype=torch.float32)
    ramp = torch.stack([coords.expand(28, 28), coords[:, None].expand(28, 28)])[None].repeat(32, 1, 1, 1)
    warped = random_affine(ramp, 0, 0, 0, elastic_px=2.0, generator=torch.Generator().manual_seed(1))
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # away from the zero-padded border
    moved = (warped - ramp)[inner]
    # control points move at most 2 px; bicubic interpolation between them may overshoot a little
    assert moved.abs().max() < 2.0 * 1.3 and moved.abs().mean() > 0.3
    # smooth: neighbours move by less than the pixel between them, so the warp never folds the image over
    # itself (strokes bend rather than tear); 0.64 is the largest seen with this seed
    assert (moved[..., 1:] - moved[..., :-1]).abs().max() < 1.0
    assert all(not torch.allclose(moved[0], moved[i]) for i in range(1, 32))  # a field per image


def test_tta_views_are_the_image_shifts_rotations_and_zooms() -> None:
    images = torch.rand(3, 1, 28, 28)
    views = tta_views(images)
    assert len(views) == 9 and all(v.shape == images.shape for v in views)
    assert views[0] is images
    for view, shift in zip(views[1:5], ((1, 0), (-1, 0), (0, 1), (0, -1))):
        assert torch.equal(view, torch.roll(images, shifts=shift, dims=(2, 3)))

    round_digit = disk(8)
    _, shifted, *_, plus5, minus5, zoom_in, zoom_out = tta_views(round_digit)
    one_pixel = (shifted - round_digit).abs().sum()
    for rotated in (plus5, minus5):  # a disk turned about its centre stays the disk, but for its blurred rim
        assert (rotated - round_digit).abs().sum() < 0.5 * one_pixel
        assert abs(rotated.sum() - round_digit.sum()) < 1e-3 * round_digit.sum()
    assert zoom_in.sum() > round_digit.sum() * 1.05 and zoom_out.sum() < round_digit.sum() * 0.95


def test_dropout_keeps_the_expectation_and_masks_the_gradient() -> None:
    dropout = Dropout(0.4)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.6))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask / 0.6)/dx = mask / 0.6
    dropout.eval()
    assert dropout(x) is x
