"""The Figure 1 image: every probe image at 4x, a mask and a masked tile per glimpse, labelled."""

from __future__ import annotations

import numpy as np
import torch

from rsam_dist.data import CLASS_NAMES
from rsam_dist.figure1 import SCALE, render_figure1


def _render(count: int, glimpses: int, colour=(1.0, 0.0, 0.0)) -> np.ndarray:
    pixels = torch.tensor(colour)[None, :, None, None].expand(count, 3, 32, 32)
    images = (pixels - 0.5) / 0.5
    masks = torch.ones(glimpses, count, 32, 32)
    labels = torch.arange(count) % 10
    predictions = torch.zeros(glimpses + 1, count, dtype=torch.long)
    return render_figure1(images, masks, labels, predictions, CLASS_NAMES["cifar10"])


def test_tiles_are_upscaled_images_not_thumbnails():
    figure = _render(count=2, glimpses=2)
    red = np.all(figure == (255, 0, 0), axis=-1).sum()
    tile = (32 * SCALE) ** 2
    # Each row shows the red image once and, with a mask of ones, the same red image per glimpse.
    assert red >= 0.9 * tile * 2 * (1 + 2)
    white = np.all(figure == (255, 255, 255), axis=-1).sum()
    assert white >= 0.9 * tile * 2 * 2  # each glimpse's mask of ones, drawn white


def test_one_row_per_probe_image_and_two_columns_per_glimpse():
    small = _render(count=1, glimpses=1)
    taller = _render(count=3, glimpses=1)
    wider = _render(count=1, glimpses=3)
    assert taller.shape[0] >= small.shape[0] + 2 * 32 * SCALE
    assert wider.shape[1] >= small.shape[1] + 4 * 32 * SCALE


def test_the_image_tile_is_the_image_pixel_for_pixel():
    """No resampling: every 32x32 pixel becomes a SCALE x SCALE block of exactly its colour."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1  # normalised, as the model sees them
    masks = torch.rand(2, 1, 32, 32, generator=generator)
    figure = render_figure1(images, masks, torch.tensor([3]), torch.zeros(3, 1, dtype=torch.long),
                            CLASS_NAMES["cifar10"])
    shown = (images[0] * 0.5 + 0.5).clamp(0, 1)
    expected = (shown * 255).round().to(torch.uint8).repeat_interleave(SCALE, 1).repeat_interleave(SCALE, 2)
    expected = expected.permute(1, 2, 0).numpy()
    corner = np.argwhere(np.all(figure == expected[0, 0], axis=-1))
    found = [(y, x) for y, x in corner if figure[y:y + 32 * SCALE, x:x + 32 * SCALE].shape == expected.shape
             and np.array_equal(figure[y:y + 32 * SCALE, x:x + 32 * SCALE], expected)]
    assert len(found) == 1, f"the image tile was not found pixel for pixel ({len(corner)} candidate corners)"
