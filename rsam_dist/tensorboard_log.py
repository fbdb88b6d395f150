"""TensorBoard output of one run, written by rank 0 only.

Tags: `train/loss`, `train/lr`, `test/top1`, `test/top1_glimpse_<i>`, `test/top1_trainmode` (BatchNorm
with batch statistics: apart from `test/top1` when evaluation measures BatchNorm's statistics rather
than the weights), `speed/images_per_sec`, `speed/epoch_seconds`; images `masks/glimpses` (row i:
glimpse i's mask over each probe image) and `masks/masked_images` (the glimpse the network saw,
the paper's Figure 1); the resolved config as text; and an hparams summary (config -> final
metrics) for TensorBoard's HParams view. The step is the 1-based epoch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from rsam_dist.config import Config
from rsam_dist.data import MEAN, STD
from rsam_dist.training import EpochResult

SCALAR_TAGS = {
    "train_loss": "train/loss",
    "lr": "train/lr",
    "test_top1": "test/top1",
    "test_top1_trainmode": "test/top1_trainmode",  # BatchNorm with batch statistics, every epoch
    "images_per_sec": "speed/images_per_sec",
    "epoch_seconds": "speed/epoch_seconds",
}
HPARAM_METRICS = ("hparams/final_test_top1", "hparams/best_test_top1", "hparams/final_train_loss")


def scalar_tag(metric: str) -> str | None:
    if metric in SCALAR_TAGS:
        return SCALAR_TAGS[metric]
    if metric.startswith("test_top1_glimpse_"):
        return "test/top1_glimpse_" + metric.removeprefix("test_top1_glimpse_")
    return None


def flat_hparams(config: Config) -> dict[str, float | int | str | bool]:
    """The config flattened to `section.key` -> scalar, as TensorBoard's HParams view wants."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = "none" if value is None else value
    return flat


class TensorBoardLogger:
    """Writes one run's event files into `log_dir`. Open it on rank 0 only."""

    def __init__(self, log_dir: str | Path, config: Config):
        self.config = config
        self.writer = SummaryWriter(str(log_dir))
        self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```", 0)
        self.writer.flush()

    def log_epoch(self, result: EpochResult) -> None:
        step = result.epoch + 1
        for metric, value in result.metrics.items():
            tag = scalar_tag(metric)
            if tag is not None:
                self.writer.add_scalar(tag, value, step)
        if result.masks is not None and result.probe_images is not None:
            self._log_masks(result.masks, result.probe_images, step)
        self.writer.flush()

    def _log_masks(self, masks: torch.Tensor, images: torch.Tensor, step: int) -> None:
        from torchvision.utils import make_grid

        glimpses, count = masks.shape[:2]
        # Each mask scaled by its own maximum so a faint mask is still visible.
        peak = masks.flatten(2).amax(-1).clamp(min=1e-8)[..., None, None]
        mask_grid = make_grid((masks / peak).reshape(-1, 1, 32, 32), nrow=count, pad_value=1.0)
        self.writer.add_image("masks/glimpses", mask_grid, step)
        masked = masks.unsqueeze(2) * images.unsqueeze(0)  # what each glimpse network saw
        pixels = (masked * STD + MEAN).clamp(0, 1).reshape(-1, 3, 32, 32)
        originals = (images * STD + MEAN).clamp(0, 1)
        grid = make_grid(torch.cat([originals, pixels]), nrow=count, pad_value=1.0)
        self.writer.add_image("masks/masked_images", grid, step)

    def log_hparams(self, final: dict[str, float], best_top1: float) -> None:
        """The HParams view's row for this run: the config -> its final metrics."""
        metrics = {
            "hparams/final_test_top1": final.get("test_top1", float("nan")),
            "hparams/best_test_top1": best_top1,
            "hparams/final_train_loss": final.get("train_loss", float("nan")),
        }
        experiment, session_start, session_end = hparams(flat_hparams(self.config), metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, final.get("epoch", 0))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
