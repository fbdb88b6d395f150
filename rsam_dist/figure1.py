"""The paper's Figure 1 as one legible image: what each glimpse looked at, for fixed probe images.

One row per probe image: the image, then for each glimpse its mask and the masked image it saw,
every tile upscaled (nearest) so a 32x32 image is readable; column titles name the glimpse, each
row says the true class and the combined prediction, and each masked tile that glimpse's guess.

    pixels = render_figure1(images, masks, labels, predictions, CLASS_NAMES["cifar10"])  # HxWx3 uint8
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rsam_dist.data import MEAN, STD

SCALE = 4
"""Upscaling of each 32x32 tile (nearest): 128-pixel tiles."""
DPI = 100


def _upscale(tile: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H*SCALE, W*SCALE, 3) for imshow."""
    big = tile.repeat_interleave(SCALE, -1).repeat_interleave(SCALE, -2)
    if big.shape[0] == 1:
        big = big.expand(3, -1, -1)
    return big.permute(1, 2, 0).numpy()


def render_figure1(
    images: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    predictions: torch.Tensor,
    class_names: tuple[str, ...],
) -> np.ndarray:
    """images (k, 3, 32, 32) normalised; masks (glimpses, k, 32, 32); labels (k,);
    predictions (glimpses + 1, k): each glimpse's class, then the combined one. Returns RGB uint8."""
    glimpses, count = masks.shape[:2]
    columns = 1 + 2 * glimpses
    tile_inches = 32 * SCALE / DPI
    figure = Figure(figsize=(columns * tile_inches + 1.6, count * (tile_inches + 0.35) + 0.5), dpi=DPI)
    axes = figure.subplots(count, columns, squeeze=False)
    originals = (images * STD + MEAN).clamp(0, 1)
    # Each mask scaled by its own maximum so a faint mask is still visible.
    peak = masks.flatten(2).amax(-1).clamp(min=1e-8)[..., None, None]
    shown_masks = (masks / peak).clamp(0, 1)
    seen = (masks.unsqueeze(2) * images.unsqueeze(0) * STD + MEAN).clamp(0, 1)
    for row in range(count):
        truth, guess = class_names[int(labels[row])], class_names[int(predictions[-1, row])]
        verdict = "right" if truth == guess else "wrong"
        tiles = [(_upscale(originals[row]), "image" if row == 0 else "")]
        for glimpse in range(glimpses):
            tiles.append((_upscale(shown_masks[glimpse, row][None]), f"glimpse {glimpse + 1} mask" if row == 0 else ""))
            tiles.append((_upscale(seen[glimpse, row]), f"glimpse {glimpse + 1} saw" if row == 0 else ""))
        for column, (pixels, title) in enumerate(tiles):
            ax = axes[row][column]
            ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if title:
                ax.set_title(title, fontsize=9)
            if column >= 2 and column % 2 == 0:
                ax.set_xlabel(f"guess: {class_names[int(predictions[(column - 2) // 2, row])]}", fontsize=8)
        axes[row][0].set_ylabel(f"true: {truth}\npredicted: {guess}\n({verdict})", fontsize=9)
    figure.tight_layout(pad=0.4)
    canvas = FigureCanvasAgg(figure)  # no pyplot: no global state, safe in Ray workers
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
