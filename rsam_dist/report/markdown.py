"""report.md: what ran, the arms, the best trial, the comparison with the paper, the figures.

Each `_section_*` returns its lines; `render_markdown` puts them in order. The numbers come from
`analysis`, so this module holds only the wording.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from rsam_dist.metrics import glimpse_of
from rsam_dist.report.analysis import (
    HEADLINE_KEYS,
    PAPER_EPOCHS,
    PAPER_GLIMPSES,
    PAPER_TITLE,
    PAPER_TOP1,
    PLOTTED,
    arm_keys,
    arm_label,
    best_completed,
    differences_from_paper,
    epoch_range,
    final_top1,
    format_metric,
    format_top1,
    format_value,
    group_arms,
    headline,
    is_sampled,
    mean_std_max,
)
from rsam_dist.report.evidence import section_differences, section_time, verdict_lines
from rsam_dist.report.figures import FIG_GLIMPSES, FIG_PER_EPOCH, FIG_SEARCH
from rsam_dist.report.stats import arm_stats
from rsam_dist.sweep.config import Distribution
from rsam_dist.sweep.results import HISTORY_FILE, RESULTS_FILE, STATUSES, SWEEP_FILE, SweepResults


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _status_counts(results: SweepResults) -> str:
    counts = Counter(t.status for t in results.trials)
    parts = [f"{counts[status]} {status.replace('_', ' ')}" for status in STATUSES]
    return f"{len(results.trials)} trials: " + ", ".join(parts)


def _describe_distribution(distribution: Distribution) -> str:
    values = getattr(distribution, distribution.kind)
    return f"{distribution.kind} [{', '.join(format_value(v) for v in values)}]"


def _section_what_ran(results: SweepResults) -> list[str]:
    spec = results.spec
    fixed = ", ".join(f"{key.removeprefix('model.')}={format_value(results.base_value(key))}"
                      for key in HEADLINE_KEYS if key not in spec.search)
    lines = [
        "## What was run",
        "",
        f"- Dataset: **{results.dataset}**; {results.base.train.epochs} epochs planned per trial.",
        f"- Search algorithm: {spec.algorithm}; scheduler: {spec.scheduler.type}; metric: {spec.metric} ({spec.mode}).",
        f"- Seeds: {', '.join(str(s) for s in spec.seeds)} (each configuration runs once per seed).",
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
                    [[f"`{key}`", _describe_distribution(dist)] for key, dist in spec.search.items()]
                    or [["(none)", "—"]])
    return lines


def _section_arms(results: SweepResults) -> list[str]:
    arms = group_arms(results, results.with_status(*PLOTTED))
    lines = ["", "## Results by arm", ""]
    if not arms:
        return lines + ["No trial completed or ran any epoch, so there is nothing to compare."]
    keys = arm_keys(results)
    rows = []
    for values, trials in arms.items():
        mean, std, best = mean_std_max(final_top1(trials))
        interval = arm_stats(final_top1(trials))
        completed = sum(t.status == "completed" for t in trials)
        rows.append([
            arm_label(keys, values), str(completed), str(len(trials) - completed),
            format_top1(mean), "—" if std is None else f"{100 * std:.2f}", format_top1(best), epoch_range(trials),
            "—" if interval.ci_low is None else f"{format_top1(interval.ci_low)} to {format_top1(interval.ci_high)}",
        ])
    lines += _table(["arm", "completed", "stopped early", "mean final top-1", "std (pp)", "best final top-1",
                     "epochs run", "95% CI of the mean"], rows)
    notes = [
        "Final top-1 is the test top-1 after a trial's last epoch; mean, std (sample std, in percentage points), "
        "the 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom) "
        "and best are over the arm's completed trials (its seeds"
        + (", and the values of the continuous keys" if is_sampled(results) and keys else "") + ").",
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
    metric, mode = results.spec.metric, results.spec.mode
    best = best_completed(results)
    if best is None:
        return lines + [f"No completed trial reported final {metric}."]
    params = ", ".join(f"`{key}={format_value(value)}`" for key, value in best.params.items()) or "(none)"
    best_epoch = f"; best epoch's test top-1 {format_top1(best.best_test_top1)}" if best.best_test_top1 is not None \
        else ""
    lines += [
        f"Trial `{best.trial_id}` (by final {metric}, {mode}): "
        f"**{format_metric(metric, best.final[metric])}** after {best.epochs_run} epochs{best_epoch}.",
        "",
        f"- Parameters: {params}",
    ]
    glimpses = sorted((glimpse_of(name), value) for name, value in best.final.items() if glimpse_of(name) is not None)
    if glimpses:
        per_glimpse = ", ".join(f"{glimpse}: {format_top1(value)}" for glimpse, value in glimpses)
        lines.append(f"- Test top-1 of each glimpse's own output: {per_glimpse}")
    if best.run_dir:
        lines.append(f"- Run directory: `{best.run_dir}`")
    if is_sampled(results):
        ranked = sorted(results.with_status("completed"), key=lambda t: t.final.get(metric, math.nan),
                        reverse=mode == "max")
        ranked = [t for t in ranked if metric in t.final][:10]
        keys = list(results.spec.search)
        lines += ["", f"Top {len(ranked)} completed trials:", ""]
        lines += _table(["trial", *keys, "seed", f"final {metric}"], [
            [t.trial_id, *(format_value(results.value(t, k)) for k in keys),
             format_value(t.params.get("train.seed")), format_metric(metric, t.final[metric])]
            for t in ranked
        ])
    return lines


def _no_glimpse_figure(results: SweepResults) -> str:
    if "model.glimpses" in results.spec.search and not results.with_status("completed"):
        return "no completed trial to plot"
    return "`model.glimpses` did not vary across the completed trials"


def _paper_rows(results: SweepResults, names: set[str]) -> list[list[str]]:
    """The comparison table: the paper's one number and figures beside this sweep's."""
    numbers = headline(results)
    if results.dataset != "cifar10":
        this_run = f"not comparable: this sweep ran on {results.dataset}"
    elif numbers.mean is None:
        this_run = "no completed trial in this setting"
    else:
        this_run = (format_top1(numbers.mean) + (f" ± {100 * numbers.std:.2f} pp" if numbers.std is not None else "")
                    + f" final, over {len(numbers.trials)} completed trial(s), {numbers.epochs} epochs")
        if numbers.best_epoch_mean is not None:
            this_run += f"; best epoch {format_top1(numbers.best_epoch_mean)} (mean)"
    fig3 = f"`{FIG_PER_EPOCH}`, table above" if FIG_PER_EPOCH in names else "no trial ran an epoch"
    fig4 = f"`{FIG_GLIMPSES}`" if FIG_GLIMPSES in names else _no_glimpse_figure(results)
    return [
        [f"CIFAR-10 test top-1, {PAPER_GLIMPSES} glimpses, feedback + down-sample network, {PAPER_EPOCHS} epochs "
         "(Section 3 text)", f"{100 * PAPER_TOP1:.2f}%", this_run],
        ["Figure 3: test top-1 per epoch of the four ablation arms", "not quoted (a figure, see the paper)", fig3],
        ["Figure 4: test top-1 against glimpse count",
         f"not quoted (a figure), except the {100 * PAPER_TOP1:.2f}% at {PAPER_GLIMPSES} glimpses above", fig4],
    ]


def _paper_notes(results: SweepResults) -> list[str]:
    """Why the comparison is what it is: what the paper states, and where this sweep differs."""
    notes = [
        f"The text of the paper (Ren, *{PAPER_TITLE}*) states one number: {100 * PAPER_TOP1:.2f}% top-1 on the "
        f"CIFAR-10 test set with {PAPER_GLIMPSES} glimpses. The other values of its Figures 3 and 4 are therefore "
        "not quoted here, not even as approximations; to compare, set the figures here beside the paper's.",
    ]
    if results.dataset != "cifar10":
        notes.insert(0, f"**This sweep ran on {results.dataset}, not CIFAR-10: the comparison with the paper's "
                        "64.95% does not apply.** It is listed for reference only.")
        return notes
    numbers = headline(results)
    if numbers.mean is not None:
        notes.append("The paper does not say whether 64.95% is the last epoch's accuracy or the best epoch's; "
                     "both are shown.")
    base_epochs = results.base.train.epochs
    if numbers.trials and any(t.epochs_run != PAPER_EPOCHS for t in numbers.trials):
        notes.append(f"These trials ran {numbers.epochs} epochs, not the paper's {PAPER_EPOCHS}.")
    elif not numbers.trials and base_epochs != PAPER_EPOCHS:
        notes.append(f"The base config plans {base_epochs} epochs, not the paper's {PAPER_EPOCHS}.")
    differs = [f"`{key}`={format_value(ours)} (paper {format_value(paper)})"
               for key, ours, paper in differences_from_paper(results)]
    if differs:
        notes.append("The base config differs from the paper's setting: " + ", ".join(differs) + ".")
    pooled = [key for key in results.spec.search if key not in HEADLINE_KEYS]
    if pooled and numbers.trials:
        notes.append("The headline row pools the values of the other searched keys: "
                     + ", ".join(f"`{key}`" for key in pooled) + ".")
    return notes


def _section_paper(results: SweepResults, names: set[str]) -> list[str]:
    table = _table(["setting", "paper", "this run"], _paper_rows(results, names))
    return ["", "## Comparison with the paper", "", *verdict_lines(results), "", *table, "",
            *(f"- {note}" for note in _paper_notes(results))]


def _section_figures(results: SweepResults, names: set[str]) -> list[str]:
    captions = {
        FIG_PER_EPOCH: "Test top-1 per epoch for each arm (the form of the paper's Figure 3)",
        FIG_GLIMPSES: "Final test top-1 against glimpse count (the form of the paper's Figure 4)",
        FIG_SEARCH: f"Final {results.spec.metric} against each numeric searched key",
    }
    lines = ["", "## Figures", ""]
    for name, caption in captions.items():
        if name in names:
            lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    if not results.has_history:
        lines += [f"No `{HISTORY_FILE}` was found, so there is no per-epoch figure.", ""]
    if FIG_PER_EPOCH not in names and results.has_history:
        lines += ["No per-epoch figure: no trial that completed or was stopped early has a recorded epoch.", ""]
    if FIG_GLIMPSES not in names:
        lines += [f"No glimpse-count figure: {_no_glimpse_figure(results)}.", ""]
    return lines


def render_markdown(results: SweepResults, figures: list[Path]) -> str:
    names = {path.name for path in figures}
    lines = [
        f"# RSAM sweep report: {results.name}",
        "",
        f"Written by `rsam-dist report {results.directory}` from `{SWEEP_FILE}`, `{RESULTS_FILE}` and "
        f"`{HISTORY_FILE}`. Accuracies are percentages of the test set.",
        "",
        *_section_what_ran(results),
        *_section_arms(results),
        *section_differences(results),
        *_section_best(results),
        *_section_paper(results, names),
        *section_time(results),
        *_section_figures(results, names),
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
