"""The report's numbers: the paper's, and this sweep's arms and statistics (no plotting, no prose).

An arm is one combination of the discrete searched keys' values (grid or choice), seeds pooled;
continuous keys (uniform, loguniform, int) are pooled within an arm.

    from rsam_dist.report.analysis import group_arms
    group_arms(results, results.with_status("completed"))   # {(True, "downsample"): [TrialResult, ...], ...}
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from rsam_dist.metrics import lookup
from rsam_dist.sweep.results import SweepResults, TrialResult, best_trial

# The paper: Ren, "Recurrent Soft Attention Model for Common Object Recognition". Only the numbers
# its text states are here; nothing is read off its figures.
PAPER_TITLE = "Recurrent Soft Attention Model for Common Object Recognition"
PAPER_TOP1 = 0.6495
"""CIFAR-10 test top-1 with 4 glimpses, feedback + down-sample network, 20 epochs (Section 3)."""
PAPER_GLIMPSES = 4
PAPER_EPOCHS = 20
PAPER_SETTING: dict[str, Any] = {
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.weight_decay": 1e-4,
    "optim.lr_decay": 0.95,
    "optim.batch_size": 128,
    "model.loss": "all_glimpses",
    "model.combine": "mean_softmax",
    "model.relu_logits": False,
    "model.hidden_size": 256,
    "data.limit_train": None,
    "data.limit_test": None,
}
"""The rest of the paper's training setting; a base config that differs is reported as such."""
HEADLINE_KEYS = ("model.glimpses", "model.feedback", "model.attention_input")
"""The keys that define the paper's headline setting (4 glimpses, feedback, down-sample network)."""

PLOTTED = ("completed", "stopped_early")
"""Trials drawn in the figures; errored and pending ones are counted but left out."""


# --- words for values ------------------------------------------------------------------------


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def describe_setting(key: str, value: Any, short: bool = True) -> str:
    """One key's value in words: "feedback on", "down-sample", "glimpses=4", "lr=0.01"."""
    if key == "model.feedback" and isinstance(value, bool):
        return "feedback on" if value else "feedback off"
    if key == "model.attention_input":
        return {"downsample": "down-sample", "fc": "fully-connected"}.get(value, f"attention input {value}")
    name = key.rsplit(".", 1)[-1] if short else key
    return f"{name}={format_value(value)}"


def arm_label(keys: list[str], values: tuple) -> str:
    short = len({key.rsplit(".", 1)[-1] for key in keys}) == len(keys)
    words = [describe_setting(key, value, short) for key, value in zip(keys, values, strict=True)]
    return ", ".join(words) or "all trials"


def is_fraction(metric: str) -> bool:
    """A 0..1 metric shown as a percentage (accuracies), by the metric table."""
    row = lookup(metric)
    return row is not None and row.fraction


def format_metric(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}%" if is_fraction(metric) else f"{value:.4g}"


def format_top1(value: float | None) -> str:
    return format_metric("test_top1", value)


# --- arms ------------------------------------------------------------------------------------


def arm_keys(results: SweepResults) -> list[str]:
    """The searched keys that define arms: those with listed values (grid, choice)."""
    return [key for key, distribution in results.spec.search.items() if distribution.discrete]


def is_sampled(results: SweepResults) -> bool:
    """Trials drew their values (random, optuna) rather than enumerating a grid; a grid sweep
    cannot search a range (SweepConfig refuses it), so this is also "some key is continuous"."""
    return results.spec.algorithm in ("random", "optuna")


def group_arms(results: SweepResults, trials: list[TrialResult]) -> dict[tuple, list[TrialResult]]:
    """Trials grouped by their discrete searched values, in the order the sweep lists them."""
    keys = arm_keys(results)
    arms: dict[tuple, list[TrialResult]] = {}
    for trial in trials:
        arms.setdefault(tuple(results.value(trial, key) for key in keys), []).append(trial)

    def order(values: tuple) -> tuple:
        ranks = []
        for key, value in zip(keys, values, strict=True):
            listed = results.spec.search[key].listed or []
            ranks.append((listed.index(value), "") if value in listed else (len(listed), str(value)))
        return tuple(ranks)

    return {values: arms[values] for values in sorted(arms, key=order)}


# --- statistics ------------------------------------------------------------------------------


def mean_std_max(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, sample std, max); std is None below two values."""
    if not values:
        return None, None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, max(values)


def final_top1(trials: list[TrialResult]) -> list[float]:
    return [t.final["test_top1"] for t in trials if t.status == "completed" and "test_top1" in t.final]


def best_completed(results: SweepResults) -> TrialResult | None:
    """The best completed trial by the sweep's metric (trials stopped early ran fewer epochs)."""
    return best_trial(results.with_status("completed"), results.spec.metric, results.spec.mode)


def epoch_range(trials: list[TrialResult]) -> str:
    epochs = sorted({t.epochs_run for t in trials})
    if not epochs:
        return "—"
    return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"


def glimpses_vary(results: SweepResults) -> bool:
    counts = {results.value(t, "model.glimpses") for t in results.with_status("completed")}
    return len(counts - {None}) > 1


def numeric_search_keys(results: SweepResults) -> list[str]:
    """Searched keys whose values are all numbers (the x axes of fig_search.png)."""
    keys = []
    for key in results.spec.search:
        values = [results.value(t, key) for t in results.with_status(*PLOTTED)]
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            keys.append(key)
    return keys


# --- the comparison with the paper -------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """This sweep's completed trials in the paper's headline setting, and their numbers."""

    trials: list[TrialResult]
    mean: float | None
    std: float | None
    best_epoch_mean: float | None
    """Mean over the trials of their best epoch's test top-1 (the paper does not say which it quotes)."""
    epochs: str


def headline(results: SweepResults) -> Headline:
    trials = [
        t for t in results.with_status("completed")
        if results.value(t, "model.glimpses") == PAPER_GLIMPSES
        and results.value(t, "model.feedback") is True
        and results.value(t, "model.attention_input") == "downsample"
    ]
    mean, std, _ = mean_std_max(final_top1(trials))
    best_epochs = [t.best_test_top1 for t in trials if t.best_test_top1 is not None]
    return Headline(trials, mean, std, statistics.fmean(best_epochs) if best_epochs else None,
                    epoch_range(trials))


def differences_from_paper(results: SweepResults) -> list[tuple[str, Any, Any]]:
    """(key, this sweep's base value, the paper's) for each unsearched key of the paper's setting that differs."""
    return [(key, results.base_value(key), paper) for key, paper in PAPER_SETTING.items()
            if key not in results.spec.search and results.base_value(key) != paper]
