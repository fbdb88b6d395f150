"""The paper's Figure 1 as one legible image: what each glimpse looked at, for fixed probe images.

One row per probe image: the image, then for each glimpse its mask and the masked image it saw,
every tile upscaled (nearest) so a 32x32 image is readable; column titles name the glimpse, each
row says the true class and the combined prediction, and each masked tile that glimpse's guess.

    pixels = render_figure1(images, masks, labels, predictions, CLASS_NAMES["cifar10"])  # HxWx3 uint8

The tiles are laid out pixel for pixel in one array and matplotlib only writes the words on it:
a grid of one matplotlib axes per tile took 2.2 s per figure (72 axes for 8 probe images), which
every epoch paid (a fifth of a 2,560-image epoch on 2 cores); this takes 0.4-0.5 s.
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
TILE = 32 * SCALE
FRAME = 1
"""The black line around each tile, in pixels."""
GAP = 12
"""Pixels between two tiles of a row."""
TITLE_SPACE = 24
"""Pixels above the first row, for the column titles."""
GUESS_SPACE = 18
"""Pixels below each row, for the glimpses' guesses."""
ROW_GAP = 10
"""Pixels between a row's guesses and the next row."""
LABEL_SPACE = 58
"""Pixels left of the first column, for each row's true and predicted class (three rotated lines)."""


def _upscale(tile: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H*SCALE, W*SCALE, 3) uint8."""
    big = (tile * 255).round().to(torch.uint8).repeat_interleave(SCALE, -1).repeat_interleave(SCALE, -2)
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
    originals = (images * STD + MEAN).clamp(0, 1)
    # Each mask scaled by its own maximum so a faint mask is still visible.
    peak = masks.flatten(2).amax(-1).clamp(min=1e-8)[..., None, None]
    shown_masks = (masks / peak).clamp(0, 1)
    seen = (masks.unsqueeze(2) * images.unsqueeze(0) * STD + MEAN).clamp(0, 1)

    def tile_left(column: int) -> int:
        return LABEL_SPACE + FRAME + column * (TILE + 2 * FRAME + GAP)

    def tile_top(row: int) -> int:
        return TITLE_SPACE + FRAME + row * (TILE + 2 * FRAME + GUESS_SPACE + ROW_GAP)

    width = tile_left(columns) - GAP
    height = tile_top(count) - ROW_GAP
    pixels = np.full((height, width, 3), 255, dtype=np.uint8)  # white paper
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def write(x: float, y: float, text: str, **style) -> None:
        """Text at pixel (x, y) counted from the top left."""
        figure.text(x / width, 1 - y / height, text, **style)

    for row in range(count):
        truth, guess = class_names[int(labels[row])], class_names[int(predictions[-1, row])]
        tiles = [(_upscale(originals[row]), "image")]
        for glimpse in range(glimpses):
            tiles.append((_upscale(shown_masks[glimpse, row][None]), f"glimpse {glimpse + 1} mask"))
            tiles.append((_upscale(seen[glimpse, row]), f"glimpse {glimpse + 1} saw"))
        top = tile_top(row)
        for column, (tile, title) in enumerate(tiles):
            left = tile_left(column)
            pixels[top - FRAME: top + TILE + FRAME, left - FRAME: left + TILE + FRAME] = 0  # the frame
            pixels[top: top + TILE, left: left + TILE] = tile
            centre = left + TILE / 2
            if row == 0:
                write(centre, top - FRAME - 4, title, fontsize=9, ha="center", va="bottom")
            if column >= 2 and column % 2 == 0:
                glimpse_guess = class_names[int(predictions[(column - 2) // 2, row])]
                write(centre, top + TILE + FRAME + 3, f"guess: {glimpse_guess}", fontsize=8, ha="center", va="top")
        verdict = "right" if truth == guess else "wrong"
        write(LABEL_SPACE - 6, top + TILE / 2, f"true: {truth}\npredicted: {guess}\n({verdict})", fontsize=9,
              rotation=90, ha="right", va="center", multialignment="center")
    figure.figimage(pixels, 0, 0, origin="upper")  # under the text, pixel for pixel
    canvas = FigureCanvasAgg(figure)  # no pyplot: no global state, safe in Ray workers
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
