"""TensorBoard output of one run, written by rank 0 only.

A sweep trial writes into `tensorboard/<label>/` (`glimpses=4,feedback=off,seed=1`), so that
`tensorboard --logdir <sweep>` names each run after what the trial is, and its HParams row holds the
searched values; a run of its own logs its whole config there. A custom-scalars layout puts the
combined and per-glimpse test top-1 in one chart.

Tags: `train/loss`, `train/lr`, `test/top1`, `test/top1_glimpse_<i>`, `test/top1_trainmode`, `speed/images_per_sec`,
`speed/epoch_seconds` (the metric table, rsam_dist/metrics.py); the image `masks/figure1` (each
probe image with every glimpse's mask and what it saw, labelled: the paper's Figure 1); the resolved
config as text; and an hparams summary (config -> final metrics) for TensorBoard's HParams view.
The step is the 1-based epoch.

On URI storage (s3://, file://...) the writer writes into a local staging folder, and the event
files are uploaded into the run's tensorboard/ after each epoch and on close, so that
`rsam-dist tensorboard s3://...` finds them.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from rsam_dist.config import Config
from rsam_dist.data import CLASS_NAMES
from rsam_dist.metrics import GLIMPSE_TAG_PREFIX, glimpse_metric, lookup
from rsam_dist.runs import is_uri, write_bytes
from rsam_dist.training import EpochResult

FIGURE1_TAG = "masks/figure1"
"""One image per epoch: each probe image, then every glimpse's mask and what it saw (Figure 1)."""


def scalar_tag(name: str) -> str | None:
    metric = lookup(name)
    return metric.tag if metric else None


def flat_hparams(config: Config) -> dict[str, float | int | str | bool]:
    """The config flattened to `section.key` -> scalar, as TensorBoard's HParams view wants."""
    flat = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = "none" if value is None else value
    return flat


HPARAMS_FINAL = ("test_top1", "train_loss", "images_per_sec")
"""Final metrics in every HParams row (each glimpse's test top-1 too), as `hparams/final_<name>`."""


def _exactly(*names: str) -> list[str]:
    """Regular expressions matching exactly the tags of these metrics (custom scalars select by regex)."""
    return [f"^{re.escape(lookup(name).tag)}$" for name in names]


CUSTOM_SCALARS = {
    "test top-1": {
        "combined and per glimpse": ["Multiline", [*_exactly("test_top1"), f"^{re.escape(GLIMPSE_TAG_PREFIX)}\\d+$"]],
        "eval-mode against train-mode BatchNorm": ["Multiline", _exactly("test_top1", "test_top1_trainmode")],
    },
    "training": {"loss": ["Multiline", _exactly("train_loss")], "speed": ["Multiline", _exactly("images_per_sec")]},
}
"""The custom-scalars dashboard: category -> chart title -> [kind, tag regexes]."""


class TensorBoardLogger:
    """Writes one run's event files into `log_dir` (a local folder or a URI), or into its subfolder
    `run_name`. `shown_hparams`: the values the HParams view shows (default: the config flattened);
    `glimpse_columns`: how many per-glimpse metrics it lists (default: this model's glimpses). In a
    sweep every trial must list the same ones: TensorBoard takes the columns from one run only.
    Open it on rank 0 only."""

    def __init__(self, log_dir: str | Path, config: Config, run_name: str | None = None,
                 shown_hparams: dict[str, float | int | str | bool] | None = None,
                 glimpse_columns: int | None = None):
        self.config = config
        self.shown_hparams = shown_hparams
        self.glimpse_columns = glimpse_columns or config.model.glimpses
        self.destination = str(log_dir).rstrip("/") + (f"/{run_name}" if run_name else "")
        # Object stores cannot append: event files grow in a local folder and are copied up whole.
        self.staging = Path(tempfile.mkdtemp(prefix="rsam-tensorboard-")) if is_uri(self.destination) else None
        self.writer = SummaryWriter(str(self.staging or self.destination))
        self.writer.add_text("config", "```yaml\n" + config.to_yaml() + "\n```", 0)
        self.writer.add_custom_scalars(CUSTOM_SCALARS)
        self.flush()

    def flush(self) -> None:
        """Write out what was logged, and on URI storage upload the event files."""
        self.writer.flush()
        if self.staging is None:
            return
        for event_file in sorted(self.staging.rglob("events.out.tfevents.*")):
            relative = event_file.relative_to(self.staging).as_posix()
            write_bytes(f"{self.destination.rstrip('/')}/{relative}", event_file.read_bytes())

    def log_epoch(self, result: EpochResult) -> None:
        step = result.epoch + 1
        for metric, value in result.metrics.items():
            tag = scalar_tag(metric)
            if tag is not None:
                self.writer.add_scalar(tag, value, step)
        if result.masks is not None and result.probe_predictions is not None:
            self._log_figure1(result, step)
        self.flush()

    def _log_figure1(self, result: EpochResult, step: int) -> None:
        from rsam_dist.figure1 import render_figure1

        pixels = render_figure1(result.probe_images, result.masks, result.probe_labels,
                                result.probe_predictions, CLASS_NAMES[self.config.data.name])
        self.writer.add_image(FIGURE1_TAG, pixels, step, dataformats="HWC")

    def log_hparams(self, final: dict[str, float], best_top1: float) -> None:
        """The HParams view's row for this run: the config -> its final metrics."""
        names = [*HPARAMS_FINAL, *(glimpse_metric(g) for g in range(1, self.glimpse_columns + 1))]
        metrics = {f"hparams/final_{name}": final.get(name, math.nan) for name in names}
        metrics["hparams/best_test_top1"] = best_top1
        experiment, session_start, session_end = hparams(self.shown_hparams or flat_hparams(self.config), metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            if not math.isnan(value):  # a glimpse this trial's model does not have: an empty cell
                self.writer.add_scalar(tag, value, final.get("epoch", 0))
        self.flush()

    def close(self) -> None:
        self.writer.close()
        if self.staging is not None:
            try:
                self.flush()  # the last events, written out by close
            finally:
                shutil.rmtree(self.staging, ignore_errors=True)
