"""The report's figures, in the form of the paper's, as PNGs (Agg canvases: pyplot's global state
is never touched, so reports can be drawn from threads and tests alike).

    fig_top1_per_epoch.png     test top-1 per epoch, one line per arm (the paper's Figure 3)
    fig_top1_vs_glimpses.png   final test top-1 against glimpse count (Figure 4), when glimpses vary
    fig_search.png             final metric against each numeric searched key (random/optuna sweeps)

Trials stopped early are drawn for the epochs they ran and left out of "final" values.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rsam_dist.report.analysis import (
    PAPER_EPOCHS,
    PAPER_GLIMPSES,
    PAPER_TOP1,
    PLOTTED,
    arm_keys,
    arm_label,
    best_completed,
    epoch_range,
    group_arms,
    is_fraction,
    mean_std_max,
    numeric_search_keys,
)
from rsam_dist.report.stats import arm_stats
from rsam_dist.sweep.results import SweepResults, TrialResult

FIG_PER_EPOCH = "fig_top1_per_epoch.png"
FIG_GLIMPSES = "fig_top1_vs_glimpses.png"
FIG_SEARCH = "fig_search.png"
MAX_LEGEND_LINES = 10
"""Beyond this many arms the per-epoch figure draws them grey and labels only the best."""


def _new_figure(width: float = 8.0, height: float = 5.0) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=130, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


# --- Figure 3: test top-1 per epoch ----------------------------------------------------------


def _top1_by_epoch(trials: list[TrialResult]) -> dict[int, list[float]]:
    """Test top-1 (%) of each epoch, one value per trial that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for trial in trials:
        for record in trial.history:
            if "test_top1" in record.metrics:
                by_epoch.setdefault(record.epoch, []).append(100 * record.metrics["test_top1"])
    return dict(sorted(by_epoch.items()))


def _line_label(results: SweepResults, values: tuple, members: list[TrialResult], many: bool) -> str:
    keys = arm_keys(results)
    if keys:
        label = arm_label(keys, values)
    else:  # each trial is its own line: name it and its values
        searched = list(results.spec.search)
        label = f"trial {values[0]}: " + arm_label(searched, tuple(results.value(members[0], k) for k in searched))
    completed = sum(t.status == "completed" for t in members)
    if completed > 1:
        label += f" (n={completed})"
    return f"best: {label}" if many else label


def _draw_arm(axes, members: list[TrialResult], colour: str, label: str, highlight: bool) -> tuple[bool, bool]:
    """One arm: the mean of its completed trials with its 95% interval as a band, and a thin dashed line per
    trial stopped early, ending in a cross (so the mean never jumps where one stops).
    Returns (drew a band, drew a stopped trial)."""
    completed = [t for t in members if t.status == "completed"]
    stopped = [t for t in members if t.status == "stopped_early"]
    band = drew_stopped = False
    if completed:
        by_epoch = _top1_by_epoch(completed)
        epochs = list(by_epoch)
        axes.plot(epochs, [statistics.fmean(v) for v in by_epoch.values()], color=colour,
                  marker="o" if len(epochs) <= 30 else None, markersize=3, linewidth=2 if highlight else 1,
                  label=label if highlight else None, zorder=3 if highlight else 2)
        if len(completed) > 1 and highlight:
            band = True
            intervals = [arm_stats(values) for values in by_epoch.values()]
            axes.fill_between(epochs, [s.ci_low if s.ci_low is not None else s.mean for s in intervals],
                              [s.ci_high if s.ci_high is not None else s.mean for s in intervals],
                              color=colour, alpha=0.18, linewidth=0)
    for number, trial in enumerate(stopped):
        by_epoch = _top1_by_epoch([trial])
        if not by_epoch:
            continue
        drew_stopped = True
        epochs = list(by_epoch)
        tops = [v[0] for v in by_epoch.values()]
        first = not completed and number == 0 and highlight
        axes.plot(epochs, tops, linestyle="--", linewidth=1, color=colour, label=label if first else None)
        axes.plot(epochs[-1], tops[-1], "x", color=colour, markersize=7, zorder=4)
    return band, drew_stopped


def plot_top1_per_epoch(results: SweepResults, path: Path) -> Path | None:
    """Test top-1 per epoch for each arm (Figure 3); with more than MAX_LEGEND_LINES arms, the
    best trial's arm in colour and the others grey."""
    trials = [t for t in results.with_status(*PLOTTED) if t.history]
    if arm_keys(results):
        arms = group_arms(results, trials)
    else:  # a purely continuous search: every trial is its own line
        arms = {(t.trial_id,): [t] for t in trials}
    if not arms:
        return None
    figure, axes = _new_figure()
    many = len(arms) > MAX_LEGEND_LINES
    best = best_completed(results)
    any_band = any_stopped = False
    for index, (values, members) in enumerate(arms.items()):
        highlight = not many or (best is not None and best in members)
        colour = ("C3" if many else f"C{index % 10}") if highlight else "0.7"
        band, stopped = _draw_arm(axes, members, colour, _line_label(results, values, members, many), highlight)
        any_band, any_stopped = any_band or band, any_stopped or stopped
    handles, labels = axes.get_legend_handles_labels()
    if many:
        handles.append(Line2D([], [], color="0.7", linewidth=1))
        labels.append(f"the other {len(arms) - 1} {'arms' if arm_keys(results) else 'trials'}")
    if any_stopped:
        handles.append(Line2D([], [], linestyle="--", marker="x", color="0.3", linewidth=1))
        labels.append("stopped early (ASHA), each trial")
    if arm_keys(results):
        what = "mean over seeds, band: 95% CI of the mean" if any_band else "one trial per arm"
    else:
        what = "one line per trial"
    axes.set_title(f"{results.name}: test top-1 per epoch ({what})", fontsize=11)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"test top-1 (%), {results.dataset}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(handles, labels, fontsize=8, loc="lower right")
    figure.savefig(path)
    return path


# --- Figure 4: final test top-1 against glimpse count ---------------------------------------


def plot_top1_vs_glimpses(results: SweepResults, path: Path) -> Path | None:
    """Final test top-1 against glimpse count: the mean over the other keys and seeds with its 95%
    confidence interval (Student's t; none for a single trial), and each trial as a dot (Figure 4)."""
    by_count: dict[int, list[float]] = {}
    for trial in results.with_status("completed"):
        count = results.value(trial, "model.glimpses")
        if count is not None and "test_top1" in trial.final:
            by_count.setdefault(int(count), []).append(100 * trial.final["test_top1"])
    if not by_count:
        return None
    counts = sorted(by_count)
    stats = [mean_std_max(by_count[c]) for c in counts]
    intervals = [arm_stats(by_count[c]) for c in counts]
    below = [s.mean - s.ci_low if s.ci_low is not None else 0.0 for s in intervals]
    above = [s.ci_high - s.mean if s.ci_high is not None else 0.0 for s in intervals]
    figure, axes = _new_figure(7.0, 4.8)
    for count in counts:
        axes.plot([count] * len(by_count[count]), by_count[count], ".", color="C0", alpha=0.35)
    axes.errorbar(counts, [s[0] for s in stats], yerr=[below, above], marker="o", color="C0",
                  capsize=4, linewidth=2, label="this run: mean, 95% CI of the mean (dots: trials)")
    for count, (mean, _, _) in zip(counts, stats, strict=True):
        axes.annotate(f"n={len(by_count[count])}", (count, mean), textcoords="offset points", xytext=(6, -12),
                      fontsize=7, color="0.35")
    on_cifar10 = results.dataset == "cifar10"
    if on_cifar10:
        axes.plot([PAPER_GLIMPSES], [100 * PAPER_TOP1], marker="*", markersize=16, color="C3", linestyle="none",
                  markerfacecolor="none", markeredgewidth=1.6, zorder=4,
                  label=f"paper: {100 * PAPER_TOP1:.2f}% at {PAPER_GLIMPSES} glimpses ({PAPER_EPOCHS} epochs)")
    epochs = epoch_range(results.with_status("completed"))
    axes.set_title(f"{results.name}: final test top-1 against glimpse count ({epochs} epochs)", fontsize=11)
    axes.set_xlabel("glimpses N")
    axes.set_ylabel(f"final test top-1 (%), {results.dataset}")
    ticks = sorted({*counts, *([PAPER_GLIMPSES] if on_cifar10 else [])})
    axes.set_xticks(ticks)
    axes.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.savefig(path)
    return path


# --- the search: final metric against each numeric key ---------------------------------------


def plot_search(results: SweepResults, path: Path) -> Path | None:
    """The sweep's final metric against each numeric searched key (random and optuna sweeps)."""
    keys = numeric_search_keys(results)
    if not keys:
        return None
    metric = results.spec.metric
    scale = 100 if is_fraction(metric) else 1
    best = best_completed(results)
    figure = Figure(figsize=(4.2 * len(keys) + 0.6, 4.2), dpi=130, layout="constrained")
    FigureCanvasAgg(figure)
    all_axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for axes, key in zip(all_axes, keys, strict=True):
        for status, style in (("completed", {"color": "C0"}),
                              ("stopped_early", {"facecolors": "none", "edgecolors": "0.5"})):
            points = [(results.value(t, key), scale * t.final[metric]) for t in results.with_status(status)
                      if metric in t.final and results.value(t, key) is not None]
            if points:
                label = "completed" if status == "completed" else "stopped early (fewer epochs)"
                axes.scatter(*zip(*points, strict=True), s=28, label=label, **style)
        if best is not None:
            axes.scatter([results.value(best, key)], [scale * best.final[metric]], marker="*", s=180,
                         color="C3", label=f"best (trial {best.trial_id})", zorder=4)
        if results.spec.search[key].kind == "loguniform":
            axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(f"final {metric}{' (%)' if scale == 100 else ''}")
        axes.grid(alpha=0.3)
    all_axes[0].legend(fontsize=8)
    figure.suptitle(f"{results.name}: {results.spec.algorithm}, final {metric} per trial", fontsize=11)
    figure.savefig(path)
    return path
