"""The one table of the metrics a run reports each epoch.

Every place that shows or stores a metric reads it here: the epoch line, TensorBoard's tags, the
sweep's history and results columns, the report's formatting and the sweep `metric:` check.
Adding a metric is one row in `METRICS` (and computing it in `training.fit`/`engine`).

    from rsam_dist.metrics import lookup, format_epoch_line
    lookup("test_top1_glimpse_2").tag      # 'test/top1_glimpse_2'
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    """The key in an epoch's metrics dict (and in metrics.jsonl, history.csv)."""
    tag: str | None
    """TensorBoard scalar tag; None: not a scalar chart (e.g. the epoch counter)."""
    label: str
    """Short human name, for tables and figure axes."""
    fraction: bool = False
    """A 0..1 value that people read as a percentage (accuracies)."""
    history: bool = True
    """A column of the sweep's history.csv and a `final_<name>` column of results.csv."""
    goal: str | None = None
    """'max' or 'min' when a sweep may optimise it (the sweep `metric:` choices), else None."""

    def show(self, value: float) -> str:
        """The value as the console and the report print it."""
        if self.fraction:
            return f"{100 * value:.2f}%"
        if self.name == "lr":
            return f"{value:.5f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.4f}"


GLIMPSE_PREFIX = "test_top1_glimpse_"
GLIMPSE_TAG_PREFIX = "test/top1_glimpse_"
"""The TensorBoard tags of the per-glimpse accuracies: this, then the 1-based glimpse."""

METRICS: tuple[Metric, ...] = (
    Metric("epoch", None, "epoch", history=False),
    Metric("train_loss", "train/loss", "train loss", goal="min"),
    Metric("test_top1", "test/top1", "test top-1", fraction=True, goal="max"),
    # BatchNorm with batch statistics: apart from test_top1 when evaluation measures BatchNorm's
    # running statistics rather than the weights (shown on the epoch line only then).
    Metric("test_top1_trainmode", "test/top1_trainmode", "test top-1, train-mode BatchNorm", fraction=True),
    Metric("lr", "train/lr", "learning rate"),
    Metric("images_per_sec", "speed/images_per_sec", "images/s"),
    Metric("epoch_seconds", "speed/epoch_seconds", "epoch seconds"),
)
TRAINMODE_GAP_SHOWN = 0.05
"""The epoch line shows train-mode (batch-statistics) test top-1 when it differs from the eval-mode
figure by more than this (5 points): the evaluation is then measuring BatchNorm's statistics."""
_BY_NAME = {metric.name: metric for metric in METRICS}
_GLIMPSE = re.compile(rf"^{GLIMPSE_PREFIX}(\d+)$")


def glimpse_metric(glimpse: int) -> str:
    """The name of glimpse `glimpse`'s (1-based) own test top-1."""
    return f"{GLIMPSE_PREFIX}{glimpse}"


def glimpse_of(name: str) -> int | None:
    """1-based glimpse index of a per-glimpse metric name, else None."""
    match = _GLIMPSE.match(name)
    return int(match.group(1)) if match else None


def lookup(name: str) -> Metric | None:
    """The table row of `name` (per-glimpse accuracies are one family of rows), or None."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    glimpse = glimpse_of(name)
    if glimpse is None:
        return None
    return Metric(name, f"{GLIMPSE_TAG_PREFIX}{glimpse}", f"glimpse {glimpse} top-1", fraction=True, goal="max")


def is_history_metric(name: str) -> bool:
    metric = lookup(name)
    return metric is not None and metric.history


def optimisable_metrics(glimpses: int) -> list[str]:
    """Every metric a sweep with `glimpses` glimpses may name as its `metric:`."""
    names = [metric.name for metric in METRICS if metric.goal]
    return names + [glimpse_metric(glimpse) for glimpse in range(1, glimpses + 1)]


def format_epoch_line(metrics: dict[str, float], epochs: int) -> str:
    """The console line of one finished epoch."""
    glimpses = " ".join(
        f"{100 * value:.1f}" for key, value in metrics.items() if glimpse_of(key) is not None
    )
    trainmode = metrics.get("test_top1_trainmode")
    gap = ""
    if trainmode is not None and abs(trainmode - metrics["test_top1"]) > TRAINMODE_GAP_SHOWN:
        gap = f"  [train-mode BN {100 * trainmode:.2f}%]"
    left = max(epochs - int(metrics["epoch"]), 0)
    eta = f"  ETA {format_duration(left * metrics['epoch_seconds'])}" if left else "  done"
    return (
        f"epoch {int(metrics['epoch']):>3}/{epochs}  loss {metrics['train_loss']:.4f}  "
        f"test top-1 {100 * metrics['test_top1']:.2f}%{gap}  (per glimpse {glimpses})  "
        f"lr {metrics['lr']:.5f}  {metrics['images_per_sec']:.0f} img/s  {metrics['epoch_seconds']:.1f} s{eta}"
    )


def format_duration(seconds: float) -> str:
    """4h05m, 12m30s or 45s: how long is left, to the precision a person plans with."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
