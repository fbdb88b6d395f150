"""`rsam-dist report SWEEP_DIR`: the paper's figures and a Markdown report for a finished sweep.

    rsam-dist report runs/ablation      # writes runs/ablation/report.md and fig_*.png

Reads what the sweep runner wrote (sweep.yaml, results.csv, history.csv) and writes:

    fig_top1_per_epoch.png     test top-1 per epoch, one line per arm (the paper's Figure 3)
    fig_top1_vs_glimpses.png   final test top-1 against glimpse count (Figure 4), when glimpses vary
    fig_search.png             final metric against each numeric searched key (random/optuna sweeps)
    report.md                  what ran, the arms, the best trial, the comparison with the paper

An arm is one combination of the discrete searched keys' values (grid or choice), seeds pooled;
continuous keys (uniform, loguniform, int) are pooled within an arm and plotted in fig_search.png.
Trials that errored or never ran are counted but left out of figures and averages. Trials that
ASHA stopped early are drawn for the epochs they ran, and left out of "final" averages.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rsam_dist.config import read_yaml
from rsam_dist.errors import UserError

# ---------------------------------------------------------------------------------------------
# The paper's numbers: only what the text of our copy states. Its figures are not in our copy
# (rsam-paper.md has the captions but no images), so nothing is read off them.

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

RESULTS_FILE = "results.csv"
HISTORY_FILE = "history.csv"
SPEC_FILE = "sweep.yaml"
REPORT_FILE = "report.md"
FIG_PER_EPOCH = "fig_top1_per_epoch.png"
FIG_GLIMPSES = "fig_top1_vs_glimpses.png"
FIG_SEARCH = "fig_search.png"

STATUSES = ("completed", "stopped_early", "error", "pending")
PLOTTED = ("completed", "stopped_early")
DISCRETE = ("grid", "choice")
CONTINUOUS = ("uniform", "loguniform", "int")
MAX_LEGEND_LINES = 10
"""Beyond this many arms the per-epoch figure draws them grey and labels only the best."""


# ---------------------------------------------------------------------------------------------
# Reading the sweep directory


@dataclass
class Trial:
    trial_id: str
    status: str
    epochs_run: int
    epochs_planned: int
    params: dict[str, Any]
    """The searched keys' values and train.seed, as dotted keys."""
    final: dict[str, float]
    """The last epoch's metrics, without the `final_` prefix."""
    best_top1: float | None
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    """One mapping per epoch, sorted by epoch."""


@dataclass
class SweepResults:
    directory: Path
    name: str
    search: dict[str, dict[str, Any]]
    seeds: list[int]
    metric: str
    mode: str
    base: dict[str, Any]
    algorithm: str | None
    scheduler: str | None
    trials: list[Trial]
    has_history: bool

    @property
    def dataset(self) -> str:
        return str(self.base.get("data", {}).get("name", "unknown"))

    @property
    def arm_keys(self) -> list[str]:
        return [key for key, dist in self.search.items() if distribution_kind(dist) in DISCRETE]

    @property
    def continuous(self) -> bool:
        kinds = {distribution_kind(dist) for dist in self.search.values()}
        return self.algorithm in ("random", "optuna") or bool(kinds & set(CONTINUOUS))

    def value(self, trial: Trial, key: str) -> Any:
        """The trial's value of a dotted config key: searched, or else the base config's."""
        return trial.params[key] if key in trial.params else self.base_value(key)

    def base_value(self, key: str) -> Any:
        node: Any = self.base
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def with_status(self, *statuses: str) -> list[Trial]:
        return [trial for trial in self.trials if trial.status in statuses]


def distribution_kind(distribution: Any) -> str:
    if isinstance(distribution, dict):
        given = [kind for kind in (*DISCRETE, *CONTINUOUS) if kind in distribution]
        if len(given) == 1:
            return given[0]
    return "unknown"


def parse_cell(text: str | None) -> Any:
    """A CSV cell as None, bool, int, float or str (YAML would read 1e-3 as a string)."""
    if text is None:
        return None
    text = text.strip()
    if text == "" or text.lower() in ("nan", "none", "null"):
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


TEXT_COLUMNS = ("trial_id", "status", "run_dir")
"""Kept as written: a trial id such as 00007 must still match between the two CSVs and read as written."""


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [{key: (value or "").strip() if key in TEXT_COLUMNS else parse_cell(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def load_sweep_results(sweep_dir: str | Path) -> SweepResults:
    directory = Path(sweep_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory: give the directory `rsam-dist sweep` wrote")
    results_path = directory / RESULTS_FILE
    if not results_path.is_file():
        raise UserError(f"{directory}: no {RESULTS_FILE}: run `rsam-dist sweep ...` first")
    rows = _read_csv(results_path)
    if not rows:
        raise UserError(f"{directory}: {RESULTS_FILE} has no trials: run `rsam-dist sweep ...` first")
    missing = [column for column in ("trial_id", "status") if column not in rows[0]]
    if missing:
        raise UserError(f"{results_path}: no {', '.join(missing)} column: not written by `rsam-dist sweep`")
    spec = read_yaml(directory / SPEC_FILE) if (directory / SPEC_FILE).is_file() else {}
    if not spec:
        raise UserError(f"{directory}: no {SPEC_FILE} beside {RESULTS_FILE}: not a sweep directory")
    search = dict(spec.get("search") or {})
    scheduler = spec.get("scheduler")

    history: dict[str, list[dict[str, Any]]] = {}
    history_path = directory / HISTORY_FILE
    if history_path.is_file():
        for row in _read_csv(history_path):
            if row.get("epoch") is not None:
                history.setdefault(str(row["trial_id"]), []).append(row)

    param_keys = [*search, "train.seed"]
    trials = []
    for row in rows:
        trial_id = str(row["trial_id"])
        trials.append(Trial(
            trial_id=trial_id,
            status=str(row.get("status") or "pending"),
            epochs_run=int(row.get("epochs_run") or 0),
            epochs_planned=int(row.get("epochs_planned") or 0),
            params={key: row[key] for key in param_keys if key in row},
            final={key.removeprefix("final_"): value for key, value in row.items()
                   if key.startswith("final_") and isinstance(value, (int, float)) and not isinstance(value, bool)},
            best_top1=row.get("best_test_top1"),
            run_dir=str(row.get("run_dir") or ""),
            history=sorted(history.get(trial_id, []), key=lambda r: r["epoch"]),
        ))
    return SweepResults(
        directory=directory,
        name=str(spec.get("name", directory.name)),
        search=search,
        seeds=list(spec.get("seeds") or []),
        metric=str(spec.get("metric", "test_top1")),
        mode=str(spec.get("mode", "max")),
        base=dict(spec.get("base") or {}),
        algorithm=spec.get("algorithm"),
        scheduler=scheduler.get("type") if isinstance(scheduler, dict) else scheduler,
        trials=trials,
        has_history=history_path.is_file(),
    )


# ---------------------------------------------------------------------------------------------
# Arms and numbers


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


def group_arms(results: SweepResults, trials: list[Trial]) -> dict[tuple, list[Trial]]:
    """Trials grouped by their discrete searched values, in the order the sweep lists them."""
    keys = results.arm_keys
    arms: dict[tuple, list[Trial]] = {}
    for trial in trials:
        arms.setdefault(tuple(results.value(trial, key) for key in keys), []).append(trial)

    def order(values: tuple) -> tuple:
        ranks = []
        for key, value in zip(keys, values, strict=True):
            listed = results.search[key].get("grid") or results.search[key].get("choice") or []
            ranks.append((listed.index(value), "") if value in listed else (len(listed), str(value)))
        return tuple(ranks)

    return {values: arms[values] for values in sorted(arms, key=order)}


def is_fraction_metric(metric: str) -> bool:
    return "top1" in metric


def format_metric(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.2f}%" if is_fraction_metric(metric) else f"{value:.4g}"


def percent(value: float | None) -> str:
    return format_metric("test_top1", value)


def summarise(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, sample std, max); std is None below two values."""
    if not values:
        return None, None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std, max(values)


def final_top1(trials: list[Trial]) -> list[float]:
    return [t.final["test_top1"] for t in trials if t.status == "completed" and "test_top1" in t.final]


def best_trial(results: SweepResults) -> Trial | None:
    candidates = [t for t in results.with_status("completed") if results.metric in t.final]
    if not candidates:
        return None
    pick = max if results.mode == "max" else min
    return pick(candidates, key=lambda t: t.final[results.metric])


def epoch_range(trials: list[Trial]) -> str:
    epochs = sorted({t.epochs_run for t in trials})
    if not epochs:
        return "—"
    return str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}–{epochs[-1]}"


def headline_trials(results: SweepResults) -> list[Trial]:
    """Completed trials in the paper's headline setting: 4 glimpses, feedback, down-sample network."""
    return [
        t for t in results.with_status("completed")
        if results.value(t, "model.glimpses") == PAPER_GLIMPSES
        and results.value(t, "model.feedback") is True
        and results.value(t, "model.attention_input") == "downsample"
    ]


def glimpses_vary(results: SweepResults) -> bool:
    counts = {results.value(t, "model.glimpses") for t in results.with_status("completed")}
    return len(counts - {None}) > 1


def numeric_search_keys(results: SweepResults) -> list[str]:
    keys = []
    for key in results.search:
        values = [results.value(t, key) for t in results.with_status(*PLOTTED)]
        values = [v for v in values if v is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            keys.append(key)
    return keys


# ---------------------------------------------------------------------------------------------
# Figures (Agg canvases; pyplot's global state is never touched)


def _new_figure(width: float = 8.0, height: float = 5.0) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=130, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _top1_by_epoch(trials: list[Trial]) -> dict[int, list[float]]:
    """Test top-1 (%) of each epoch, one value per trial that reached it."""
    by_epoch: dict[int, list[float]] = {}
    for trial in trials:
        for row in trial.history:
            if isinstance(row.get("test_top1"), (int, float)):
                by_epoch.setdefault(int(row["epoch"]), []).append(100 * row["test_top1"])
    return dict(sorted(by_epoch.items()))


def plot_top1_per_epoch(results: SweepResults, path: Path) -> Path | None:
    """Test top-1 per epoch for each arm (Figure 3).

    An arm's line is the mean over its completed trials with a min–max band; a trial stopped early
    is a thin dashed line of its own, ending in a cross, so the mean never jumps when it stops.
    """
    trials = [t for t in results.with_status(*PLOTTED) if t.history]
    if results.arm_keys:
        arms = group_arms(results, trials)
    else:  # a purely continuous search: every trial is its own line
        arms = {(t.trial_id,): [t] for t in trials}
    if not arms:
        return None
    figure, axes = _new_figure()
    many = len(arms) > MAX_LEGEND_LINES
    best = best_trial(results)
    any_band = any_stopped = False
    for index, (values, members) in enumerate(arms.items()):
        completed = [t for t in members if t.status == "completed"]
        stopped = [t for t in members if t.status == "stopped_early"]
        highlight = not many or (best is not None and best in members)
        colour = ("C3" if many else f"C{index % 10}") if highlight else "0.7"
        if results.arm_keys:
            label = arm_label(results.arm_keys, values)
        else:
            keys = list(results.search)
            label = f"trial {values[0]}: " + arm_label(keys, tuple(results.value(members[0], k) for k in keys))
        if len(completed) > 1:
            label += f" (n={len(completed)})"
        if many:
            label = f"best: {label}"
        if completed:
            by_epoch = _top1_by_epoch(completed)
            epochs = list(by_epoch)
            axes.plot(epochs, [statistics.fmean(v) for v in by_epoch.values()], color=colour,
                      marker="o" if len(epochs) <= 30 else None, markersize=3, linewidth=2 if highlight else 1,
                      label=label if highlight else None, zorder=3 if highlight else 2)
            if len(completed) > 1 and highlight:
                any_band = True
                axes.fill_between(epochs, [min(v) for v in by_epoch.values()], [max(v) for v in by_epoch.values()],
                                  color=colour, alpha=0.18, linewidth=0)
        for number, trial in enumerate(stopped):
            by_epoch = _top1_by_epoch([trial])
            if not by_epoch:
                continue
            any_stopped = True
            epochs = list(by_epoch)
            tops = [v[0] for v in by_epoch.values()]
            first = not completed and number == 0 and highlight
            axes.plot(epochs, tops, linestyle="--", linewidth=1, color=colour, label=label if first else None)
            axes.plot(epochs[-1], tops[-1], "x", color=colour, markersize=7, zorder=4)
    handles, labels = axes.get_legend_handles_labels()
    if many:
        handles.append(Line2D([], [], color="0.7", linewidth=1))
        labels.append(f"the other {len(arms) - 1} {'arms' if results.arm_keys else 'trials'}")
    if any_stopped:
        handles.append(Line2D([], [], linestyle="--", marker="x", color="0.3", linewidth=1))
        labels.append("stopped early (ASHA), each trial")
    if results.arm_keys:
        what = "mean over seeds, band min–max" if any_band else "one trial per arm"
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


def plot_top1_vs_glimpses(results: SweepResults, path: Path) -> Path | None:
    """Final test top-1 against glimpse count, mean ± std over the other keys and seeds (Figure 4)."""
    by_count: dict[int, list[float]] = {}
    for trial in results.with_status("completed"):
        count = results.value(trial, "model.glimpses")
        if count is not None and "test_top1" in trial.final:
            by_count.setdefault(int(count), []).append(100 * trial.final["test_top1"])
    if not by_count:
        return None
    counts = sorted(by_count)
    stats = [summarise(by_count[c]) for c in counts]
    figure, axes = _new_figure(7.0, 4.8)
    for count in counts:
        axes.plot([count] * len(by_count[count]), by_count[count], ".", color="C0", alpha=0.35)
    axes.errorbar(counts, [s[0] for s in stats], yerr=[s[1] or 0.0 for s in stats], marker="o", color="C0",
                  capsize=4, linewidth=2, label="this run: mean ± std (dots: trials)")
    for count, (mean, _, _) in zip(counts, stats, strict=True):
        axes.annotate(f"n={len(by_count[count])}", (count, mean), textcoords="offset points", xytext=(6, -12),
                      fontsize=7, color="0.35")
    if results.dataset == "cifar10":
        axes.plot([PAPER_GLIMPSES], [100 * PAPER_TOP1], marker="*", markersize=16, color="C3", linestyle="none",
                  markerfacecolor="none", markeredgewidth=1.6, zorder=4,
                  label=f"paper: {100 * PAPER_TOP1:.2f}% at {PAPER_GLIMPSES} glimpses ({PAPER_EPOCHS} epochs)")
    epochs = epoch_range(results.with_status("completed"))
    axes.set_title(f"{results.name}: final test top-1 against glimpse count ({epochs} epochs)", fontsize=11)
    axes.set_xlabel("glimpses N")
    axes.set_ylabel(f"final test top-1 (%), {results.dataset}")
    ticks = sorted({*counts, *([PAPER_GLIMPSES] if results.dataset == "cifar10" else [])})
    axes.set_xticks(ticks)
    axes.set_xlim(ticks[0] - 0.5, ticks[-1] + 0.5)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.savefig(path)
    return path


def plot_search(results: SweepResults, path: Path) -> Path | None:
    """The sweep's final metric against each numeric searched key (random and optuna sweeps)."""
    keys = numeric_search_keys(results)
    if not keys:
        return None
    metric = results.metric
    scale = 100 if is_fraction_metric(metric) else 1
    best = best_trial(results)
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
        if distribution_kind(results.search[key]) == "loguniform":
            axes.set_xscale("log")
        axes.set_xlabel(key)
        axes.set_ylabel(f"final {metric}{' (%)' if scale == 100 else ''}")
        axes.grid(alpha=0.3)
    all_axes[0].legend(fontsize=8)
    figure.suptitle(f"{results.name}: {results.algorithm or 'search'}, final {metric} per trial", fontsize=11)
    figure.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------
# The Markdown report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _status_counts(results: SweepResults) -> str:
    counts = Counter(t.status for t in results.trials)
    order = [*STATUSES, *sorted(set(counts) - set(STATUSES))]
    parts = [f"{counts[s]} {s.replace('_', ' ')}" for s in order if counts[s] or s in STATUSES]
    return f"{len(results.trials)} trials: " + ", ".join(parts)


def _describe_distribution(distribution: Any) -> str:
    kind = distribution_kind(distribution)
    if kind == "unknown":
        return str(distribution)
    values = distribution[kind]
    listed = ", ".join(format_value(v) for v in values)
    return f"{kind} [{listed}]"


def _section_what_ran(results: SweepResults) -> list[str]:
    base = results.base
    epochs = base.get("train", {}).get("epochs", "?")
    model = base.get("model", {})
    fixed = ", ".join(
        f"{key}={format_value(model[key])}" for key in ("glimpses", "feedback", "attention_input")
        if key in model and f"model.{key}" not in results.search
    )
    lines = [
        "## What was run",
        "",
        f"- Dataset: **{results.dataset}**; {epochs} epochs planned per trial.",
        f"- Search algorithm: {results.algorithm or 'not recorded'}; scheduler: {results.scheduler or 'not recorded'}; "
        f"metric: {results.metric} ({results.mode}).",
        f"- Seeds: {', '.join(str(s) for s in results.seeds) or 'not recorded'} "
        "(each configuration runs once per seed).",
    ]
    if fixed:
        lines.append(f"- Model settings not searched (from the base config): {fixed}.")
    lines.append(f"- {_status_counts(results)}.")
    left_out = [t for t in results.trials if t.status not in PLOTTED]
    if left_out:
        described = ", ".join(f"{t.trial_id} ({t.status})" for t in left_out)
        lines.append(f"- Left out of every figure and average: {described}.")
    lines += ["", "Searched keys:", ""]
    lines += _table(["key", "distribution"],
                    [[f"`{key}`", _describe_distribution(dist)] for key, dist in results.search.items()]
                    or [["(none)", "—"]])
    return lines


def _section_arms(results: SweepResults) -> list[str]:
    arms = group_arms(results, results.with_status(*PLOTTED))
    lines = ["", "## Results by arm", ""]
    if not arms:
        return lines + ["No trial completed or ran any epoch, so there is nothing to compare."]
    keys = results.arm_keys
    rows = []
    for values, trials in arms.items():
        mean, std, best = summarise(final_top1(trials))
        completed = sum(t.status == "completed" for t in trials)
        rows.append([
            arm_label(keys, values), str(completed), str(len(trials) - completed),
            percent(mean), "—" if std is None else f"{100 * std:.2f}", percent(best), epoch_range(trials),
        ])
    lines += _table(["arm", "completed", "stopped early", "mean final top-1", "std (pp)", "best final top-1",
                     "epochs run"], rows)
    notes = [
        "Final top-1 is the test top-1 after a trial's last epoch; mean, std (sample std, in percentage points) "
        "and best are over the arm's completed trials (its seeds"
        + (", and the values of the continuous keys" if results.continuous and keys else "") + ").",
    ]
    if results.with_status("stopped_early"):
        notes.append("Trials stopped early by the scheduler ran fewer epochs, so they are left out of the final "
                     "columns; they appear in the per-epoch figure for the epochs they ran.")
    if not keys:
        notes.append("No discrete key was searched, so all trials form one arm; see the trials below and "
                     f"`{FIG_SEARCH}`.")
    return lines + [""] + [f"- {note}" for note in notes]


def _section_best(results: SweepResults) -> list[str]:
    lines = ["", "## Best trial", ""]
    best = best_trial(results)
    if best is None:
        return lines + [f"No completed trial reported final {results.metric}."]
    params = ", ".join(f"`{key}={format_value(value)}`" for key, value in best.params.items()) or "(none)"
    lines += [
        f"Trial `{best.trial_id}` (by final {results.metric}, {results.mode}): "
        f"**{format_metric(results.metric, best.final[results.metric])}** after {best.epochs_run} epochs"
        + (f"; best epoch's test top-1 {percent(best.best_top1)}" if best.best_top1 is not None else "") + ".",
        "",
        f"- Parameters: {params}",
    ]
    glimpse_keys = sorted((k for k in best.final if k.startswith("test_top1_glimpse_")),
                          key=lambda k: int(k.rsplit("_", 1)[-1]))
    if glimpse_keys:
        per_glimpse = ", ".join(f"{k.rsplit('_', 1)[-1]}: {percent(best.final[k])}" for k in glimpse_keys)
        lines.append(f"- Test top-1 of each glimpse's own output: {per_glimpse}")
    if best.run_dir:
        lines.append(f"- Run directory: `{best.run_dir}`")
    if results.continuous:
        ranked = sorted(results.with_status("completed"), key=lambda t: t.final.get(results.metric, math.nan),
                        reverse=results.mode == "max")
        ranked = [t for t in ranked if results.metric in t.final][:10]
        keys = [key for key in results.search]
        lines += ["", f"Top {len(ranked)} completed trials:", ""]
        lines += _table(["trial", *keys, "seed", f"final {results.metric}"], [
            [t.trial_id, *(format_value(results.value(t, k)) for k in keys),
             format_value(t.params.get("train.seed")), format_metric(results.metric, t.final[results.metric])]
            for t in ranked
        ])
    return lines


def _no_glimpse_figure(results: SweepResults) -> str:
    if "model.glimpses" in results.search and not results.with_status("completed"):
        return "no completed trial to plot"
    return "`model.glimpses` did not vary across the completed trials"


def _section_paper(results: SweepResults, names: set[str]) -> list[str]:
    dataset = results.dataset
    headline = headline_trials(results)
    mean, std, _ = summarise(final_top1(headline))
    best_epochs = [t.best_top1 for t in headline if t.best_top1 is not None]
    epochs = epoch_range(headline)
    if dataset != "cifar10":
        this_run = f"not comparable: this sweep ran on {dataset}"
    elif mean is None:
        this_run = "no completed trial in this setting"
    else:
        this_run = (f"{percent(mean)}" + (f" ± {100 * std:.2f} pp" if std is not None else "")
                    + f" final, over {len(headline)} completed trial(s), {epochs} epochs")
        if best_epochs:
            this_run += f"; best epoch {percent(statistics.fmean(best_epochs))} (mean)"
    fig3 = f"`{FIG_PER_EPOCH}`, table above" if FIG_PER_EPOCH in names else "no trial ran an epoch"
    if FIG_GLIMPSES in names:
        fig4 = f"`{FIG_GLIMPSES}`"
    else:
        fig4 = _no_glimpse_figure(results)
    rows = [
        [f"CIFAR-10 test top-1, {PAPER_GLIMPSES} glimpses, feedback + down-sample network, {PAPER_EPOCHS} epochs "
         "(Section 3 text)", f"{100 * PAPER_TOP1:.2f}%", this_run],
        ["Figure 3: test top-1 per epoch of the four ablation arms",
         "not quoted: the figure is not in our copy", fig3],
        ["Figure 4: test top-1 against glimpse count", "not quoted, except the 64.95% at 4 glimpses above", fig4],
    ]
    notes = [
        "Our copy of the paper (Markdown) has the captions of Figures 3 and 4 but not their images, and its text "
        f"states one number: {100 * PAPER_TOP1:.2f}% top-1 on the CIFAR-10 test set with {PAPER_GLIMPSES} glimpses. "
        "The other values of Figures 3 and 4 are therefore not quoted here, not even as approximations; "
        "to compare, set the figures here beside those in the paper's PDF.",
    ]
    if mean is not None and dataset == "cifar10":
        notes.append("The paper does not say whether 64.95% is the last epoch's accuracy or the best epoch's; "
                     "both are shown.")
    if dataset != "cifar10":
        notes.insert(0, f"**This sweep ran on {dataset}, not CIFAR-10: the comparison with the paper's 64.95% "
                        "does not apply.** It is listed for reference only.")
    else:
        base_epochs = results.base.get("train", {}).get("epochs")
        if headline and any(t.epochs_run != PAPER_EPOCHS for t in headline):
            notes.append(f"These trials ran {epochs} epochs, not the paper's {PAPER_EPOCHS}.")
        elif not headline and base_epochs not in (None, PAPER_EPOCHS):
            notes.append(f"The base config plans {base_epochs} epochs, not the paper's {PAPER_EPOCHS}.")
        differs = []
        for key, paper_value in PAPER_SETTING.items():
            if key in results.search:
                continue
            ours = results.base_value(key)
            if ours != paper_value:
                differs.append(f"`{key}`={format_value(ours)} (paper {format_value(paper_value)})")
        if differs:
            notes.append("The base config differs from the paper's setting: " + ", ".join(differs) + ".")
        pooled = [key for key in results.search
                  if key not in ("model.glimpses", "model.feedback", "model.attention_input")]
        if pooled and headline:
            notes.append("The headline row pools the values of the other searched keys: "
                         + ", ".join(f"`{key}`" for key in pooled) + ".")
    return ["", "## Comparison with the paper", ""] + _table(["setting", "paper", "this run"], rows) + [""] + [
        f"- {note}" for note in notes]


def render_markdown(results: SweepResults, figures: list[Path]) -> str:
    names = {path.name for path in figures}
    captions = {
        FIG_PER_EPOCH: "Test top-1 per epoch for each arm (the form of the paper's Figure 3)",
        FIG_GLIMPSES: "Final test top-1 against glimpse count (the form of the paper's Figure 4)",
        FIG_SEARCH: f"Final {results.metric} against each numeric searched key",
    }
    lines = [
        f"# RSAM sweep report: {results.name}",
        "",
        f"Written by `rsam-dist report {results.directory}` from `{SPEC_FILE}`, `{RESULTS_FILE}` and "
        f"`{HISTORY_FILE}`. Accuracies are percentages of the test set.",
        "",
        *_section_what_ran(results),
        *_section_arms(results),
        *_section_best(results),
        *_section_paper(results, names),
        "",
        "## Figures",
        "",
    ]
    for name, caption in captions.items():
        if name in names:
            lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    if not results.has_history:
        lines += [f"No `{HISTORY_FILE}` was found, so there is no per-epoch figure.", ""]
    if FIG_PER_EPOCH not in names and results.has_history:
        lines += ["No per-epoch figure: no trial that completed or was stopped early has a recorded epoch.", ""]
    if FIG_GLIMPSES not in names:
        lines += [f"No glimpse-count figure: {_no_glimpse_figure(results)}.", ""]
    lines += [
        "## TensorBoard",
        "",
        "Every trial logged its epochs (losses, accuracy per glimpse, learning rate, throughput, glimpse masks):",
        "",
        "```",
        f"tensorboard --logdir {results.directory}",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_report(sweep_dir: str | Path) -> list[Path]:
    """Write the figures and report.md into `sweep_dir`; returns the paths written."""
    results = load_sweep_results(sweep_dir)
    directory = results.directory
    figures = [
        plot_top1_per_epoch(results, directory / FIG_PER_EPOCH),
        plot_top1_vs_glimpses(results, directory / FIG_GLIMPSES) if glimpses_vary(results) else None,
        plot_search(results, directory / FIG_SEARCH) if results.continuous else None,
    ]
    written = [path for path in figures if path is not None]
    report = directory / REPORT_FILE
    report.write_text(render_markdown(results, written))
    return [*written, report]
