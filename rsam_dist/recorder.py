"""What rank 0 does with each finished epoch, on every path: the progress line, metrics.jsonl,
TensorBoard, and the best checkpoint. (Epoch checkpoints differ by path: Ray's in ray_train.py,
ours in local.py.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rsam_dist.config import Config
from rsam_dist.loss_watch import DivergenceWatch
from rsam_dist.metrics import format_epoch_line
from rsam_dist.runs import BEST_DIR, STATE_FILE, RunDir, append_metrics, save_state
from rsam_dist.tensorboard_log import TensorBoardLogger
from rsam_dist.training import EpochResult, TrainState


@dataclass(frozen=True)
class TrialIdentity:
    """What a sweep trial is: `label` (`glimpses=4,feedback=off`), the searched `params`, and the
    `most_glimpses` of any trial of its sweep (every trial's HParams lists as many glimpse columns)."""

    label: str
    params: dict[str, Any]
    most_glimpses: int | None = None


class EpochRecorder:
    def __init__(self, config: Config, run: RunDir, quiet: bool = False, best_top1: float = -math.inf,
                 trial: TrialIdentity | None = None):
        """`best_top1`: the best test top-1 saved before (a resumed run's), which a tie does not replace.
        `trial`: a sweep trial's label and searched values (its TensorBoard run's name and HParams)."""
        self.config = config
        self.run = run
        self.quiet = quiet
        self.logger = TensorBoardLogger(run.tensorboard, config, run_name=trial.label if trial else None,
                                        shown_hparams=trial.params if trial else None,
                                        glimpse_columns=trial.most_glimpses if trial else None)
        self.last_metrics: dict[str, float] = {}
        self.best_saved = best_top1
        self.divergence = DivergenceWatch.for_run(run, config.model)

    def record(self, result: EpochResult, state: TrainState) -> None:
        self.last_metrics = result.metrics
        if not self.quiet:
            print(format_epoch_line(result.metrics, self.config.train.epochs), flush=True)
        self.logger.log_epoch(result)
        append_metrics(self.run, result.metrics)
        top1 = result.metrics["test_top1"]
        # Strictly better: on a tie the earlier epoch stays the best; a diverged epoch never is.
        if not self.divergence.diverged(result.metrics) and top1 > self.best_saved:
            save_state(self.run.file(BEST_DIR, STATE_FILE), state.state_dict())
            self.best_saved = top1

    def finish(self, state: TrainState) -> None:
        if self.last_metrics:
            self.logger.log_hparams(self.last_metrics, state.best_top1)
        self.logger.close()
