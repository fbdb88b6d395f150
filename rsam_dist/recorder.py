"""What rank 0 does with each finished epoch, on every path: the progress line, TensorBoard, and
the best checkpoint. (Epoch checkpoints differ by path: Ray's in ray_train.py, ours in local.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

from rsam_dist.config import Config
from rsam_dist.runs import STATE_FILE, local_dir, save_state, tensorboard_dir
from rsam_dist.tensorboard_log import TensorBoardLogger
from rsam_dist.training import EpochResult, TrainState

TRAINMODE_GAP_SHOWN = 0.05
"""The epoch line shows train-mode (batch-statistics) test top-1 when it differs from the eval-mode
figure by more than this (5 points): the evaluation is then measuring BatchNorm's statistics."""


def format_epoch_line(metrics: dict[str, float], epochs: int) -> str:
    glimpses = " ".join(
        f"{100 * value:.1f}" for key, value in metrics.items() if key.startswith("test_top1_glimpse_")
    )
    trainmode = metrics.get("test_top1_trainmode")
    gap = ""
    if trainmode is not None and abs(trainmode - metrics["test_top1"]) > TRAINMODE_GAP_SHOWN:
        gap = f"  [train-mode BN {100 * trainmode:.2f}%]"
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"test top-1 {100 * metrics['test_top1']:.2f}%{gap}  (per glimpse {glimpses})  "
        f"lr {metrics['lr']:.5f}  {metrics['images_per_sec']:.0f} img/s  {metrics['epoch_seconds']:.1f} s"
    )


METRICS_FILE = "metrics.jsonl"


def append_metrics(run_path: str, metrics: dict[str, float]) -> None:
    """One JSON line per epoch in the run directory (local runs only): the run's own record,
    which sweeps read back whatever Tune kept of an interrupted and restored trial."""
    directory = local_dir(run_path)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")


def read_metrics(run_path: str | Path) -> list[dict[str, float]]:
    """Every epoch's metrics from `append_metrics`, one per epoch (the last report of a redone epoch)."""
    path = Path(run_path) / METRICS_FILE
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            metrics = json.loads(line)
            by_epoch[int(metrics["epoch"])] = metrics
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


class EpochRecorder:
    def __init__(self, config: Config, run_path: str, quiet: bool = False):
        self.config = config
        self.run_path = run_path
        self.quiet = quiet
        self.logger = TensorBoardLogger(tensorboard_dir(run_path, config), config)
        self.last_metrics: dict[str, float] = {}

    def record(self, result: EpochResult, state: TrainState) -> None:
        self.last_metrics = result.metrics
        if not self.quiet:
            print(format_epoch_line(result.metrics, self.config.train.epochs), flush=True)
        self.logger.log_epoch(result)
        append_metrics(self.run_path, result.metrics)
        if result.metrics["test_top1"] >= state.best_top1:  # best_top1 already includes this epoch
            save_state(f"{self.run_path}/best/{STATE_FILE}", state.state_dict())

    def finish(self, state: TrainState) -> None:
        if self.last_metrics:
            self.logger.log_hparams(self.last_metrics, state.best_top1)
        self.logger.close()
