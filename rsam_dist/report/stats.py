"""Replication statistics: each arm's mean with its 95% interval, the verdict against the paper,
and the difference between arms with Welch's t-test, in numbers and in plain words.

- An arm's interval is the 95% confidence interval of its mean final test top-1 over its seeds,
  from Student's t with n - 1 degrees of freedom (scipy.stats.t).
- Against the paper (CIFAR-10, 4 glimpses, feedback + down-sample network, 20 epochs: 64.95%):
  "reproduced" when 64.95% lies in that interval or the mean is above it, "not reproduced"
  otherwise, "not comparable" on other data or settings, and "too thin" below MIN_REPLICATES seeds.
- Between two arms that differ in one searched key: the difference of means, its 95% interval
  and the p-value of Welch's t-test (unequal variances; scipy.stats.ttest_ind), e.g.
  "feedback adds 2.1 points, 95% CI 0.8 to 3.4, p = 0.01, n = 5 per arm".

    from rsam_dist.report.stats import arm_stats, welch
    arm_stats([0.61, 0.63, 0.65]).ci_low
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from rsam_dist.report.analysis import (
    PAPER_EPOCHS,
    PAPER_GLIMPSES,
    PAPER_SETTING,
    PAPER_TOP1,
    arm_keys,
    describe_setting,
    format_value,
    group_arms,
    headline,
)
from rsam_dist.sweep.results import SweepResults, TrialResult

CONFIDENCE = 0.95
MIN_REPLICATES = 3
"""Fewer seeds than this in an arm: no verdict and no test, the evidence is "too thin"."""

Verdict = Literal["reproduced", "not reproduced", "not comparable", "too thin"]


# --- one arm -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmStats:
    n: int
    mean: float | None
    std: float | None
    """Sample standard deviation (n - 1); None below two values."""
    ci_low: float | None
    ci_high: float | None
    """The 95% interval of the mean (Student's t); None below two values."""


def arm_stats(values: list[float]) -> ArmStats:
    from scipy import stats

    n = len(values)
    if n == 0:
        return ArmStats(0, None, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return ArmStats(1, mean, None, None, None)
    std = statistics.stdev(values)
    if std == 0:
        return ArmStats(n, mean, 0.0, mean, mean)
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    return ArmStats(n, mean, std, float(low), float(high))


def final_values(trials: list[TrialResult]) -> list[float]:
    """Final test top-1 of the completed trials."""
    return [t.final["test_top1"] for t in trials if t.status == "completed" and "test_top1" in t.final]


# --- against the paper ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperComparison:
    verdict: Verdict
    stats: ArmStats
    reason: str
    """Why, in words (the sentence the report prints)."""


def paper_comparison(results: SweepResults) -> PaperComparison:
    """This sweep's trials in the paper's headline setting against the paper's 64.95%."""
    trials = headline(results).trials
    numbers = arm_stats(final_values(trials))
    differs = _differences(results, trials)
    if differs:
        return PaperComparison("not comparable", numbers, "not comparable: " + "; ".join(differs))
    if numbers.n < MIN_REPLICATES:
        return PaperComparison("too thin", numbers, (
            f"too thin: {numbers.n} completed trial(s) in the paper's setting; a verdict needs at least "
            f"{MIN_REPLICATES} seeds (e.g. --set seeds={max(5, MIN_REPLICATES)})"))
    interval = f"{_pct(numbers.mean)} (95% CI {_pct(numbers.ci_low)} to {_pct(numbers.ci_high)}, n = {numbers.n})"
    if numbers.ci_low <= PAPER_TOP1 <= numbers.ci_high:
        return PaperComparison("reproduced", numbers,
                               f"reproduced: the paper's {_pct(PAPER_TOP1)} lies within {interval}")
    if numbers.mean > PAPER_TOP1:
        return PaperComparison("reproduced", numbers, f"reproduced: {interval} is above the paper's {_pct(PAPER_TOP1)}")
    return PaperComparison("not reproduced", numbers,
                           f"not reproduced: {interval} lies below the paper's {_pct(PAPER_TOP1)}")


def _differences(results: SweepResults, trials: list[TrialResult]) -> list[str]:
    """Why this sweep's headline trials are not the paper's setting (empty: they are)."""
    if results.dataset != "cifar10":
        return [f"this sweep ran on {results.dataset}, the paper on CIFAR-10"]
    if not trials:
        return [f"no completed trial in the paper's setting ({PAPER_GLIMPSES} glimpses, feedback, down-sample "
                "network)"]
    reasons = []
    epochs = sorted({t.epochs_run for t in trials})
    if epochs != [PAPER_EPOCHS]:
        reasons.append(f"these trials ran {', '.join(map(str, epochs))} epochs, the paper {PAPER_EPOCHS}")
    for key, paper in PAPER_SETTING.items():
        ours = sorted({format_value(results.value(t, key)) for t in trials})
        if ours != [format_value(paper)]:
            reasons.append(f"{key}={'/'.join(ours)} (paper {format_value(paper)})")
    return reasons


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


# --- between arms --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    key: str
    value_a: Any
    value_b: Any
    context: dict[str, Any]
    """The other searched keys' values, the same in both arms."""
    a: ArmStats
    b: ArmStats
    difference: float | None
    """mean(a) - mean(b), as a fraction (0.021 = 2.1 points)."""
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    sentence: str
    claim: str
    """The sentence's first part: what the difference is, where, and n ("feedback adds 2.1 points, n = 5 per arm")."""

    @property
    def thin(self) -> bool:
        return min(self.a.n, self.b.n) < MIN_REPLICATES


def welch(a: list[float], b: list[float]) -> tuple[float, float | None, float | None, float | None]:
    """(mean(a) - mean(b), its 95% interval, Welch's two-sided p-value); the last three None when the
    test is undefined (fewer than two values, or no variation in either arm)."""
    from scipy import stats

    difference = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2 or (statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0):
        return difference, None, None, None
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return difference, float(interval.low), float(interval.high), float(result.pvalue)


def arm_differences(results: SweepResults) -> list[Difference]:
    """For each discrete searched key, the arms that differ in it alone: feedback on against off,
    down-sample against fc, each glimpse count against the first listed; over completed trials."""
    keys = arm_keys(results)
    arms = {values: final_values(trials)
            for values, trials in group_arms(results, results.with_status("completed")).items()}
    differences = []
    for index, key in enumerate(keys):
        listed = results.spec.search[key].listed or []
        if len(listed) < 2:
            continue
        pairs = [(True, False)] if set(listed) == {True, False} else (
            [(listed[0], listed[1])] if len(listed) == 2 else [(value, listed[0]) for value in listed[1:]])
        contexts = sorted({values[:index] + values[index + 1:] for values in arms}, key=str)
        for context in contexts:
            for value_a, value_b in pairs:
                a = arms.get(context[:index] + (value_a,) + context[index:], [])
                b = arms.get(context[:index] + (value_b,) + context[index:], [])
                if a and b:
                    others = dict(zip(keys[:index] + keys[index + 1:], context, strict=True))
                    differences.append(_difference(key, value_a, value_b, others, a, b))
    return differences


def _difference(key: str, value_a: Any, value_b: Any, context: dict[str, Any], a: list[float],
                b: list[float]) -> Difference:
    stats_a, stats_b = arm_stats(a), arm_stats(b)
    difference, low, high, p_value = welch(a, b)
    subject = _subject(key, value_a, value_b)
    plural = key == "model.glimpses"  # "4 glimpses instead of 1 add ..."
    verb = ("add" if plural else "adds") if difference >= 0 else ("cost" if plural else "costs")
    where = f" (at {', '.join(describe_setting(k, v) for k, v in context.items())})" if context else ""
    n = f"n = {stats_a.n} per arm" if stats_a.n == stats_b.n else f"n = {stats_a.n} and {stats_b.n}"
    text = f"{subject} {verb} {100 * abs(difference):.1f} points{where}"
    claim = f"{text}, {n}"
    if min(stats_a.n, stats_b.n) < MIN_REPLICATES:
        text += f", {n}: too thin for a test (it needs {MIN_REPLICATES} seeds per arm)"
    elif p_value is None:
        text += f", {n}: every seed gave the same accuracy in both arms, so no test is possible"
    else:
        sign = 1 if difference >= 0 else -1  # the interval of the amount added (or cost)
        lo, hi = sorted((100 * sign * low, 100 * sign * high))
        conclusion = "the interval excludes zero" if low > 0 or high < 0 else \
            "the interval includes zero: this could be noise"
        text += f", 95% CI {lo:.1f} to {hi:.1f}, {_p_text(p_value)}, {n} ({conclusion})"
    return Difference(key, value_a, value_b, context, stats_a, stats_b, difference, low, high, p_value, text, claim)


def _subject(key: str, value_a: Any, value_b: Any) -> str:
    if key == "model.feedback" and value_a is True and value_b is False:
        return "feedback"
    if key == "model.glimpses":
        return f"{value_a} glimpses instead of {value_b}"
    if key == "model.attention_input":
        return f"the {describe_setting(key, value_a)} input instead of the {describe_setting(key, value_b)} one"
    return f"{describe_setting(key, value_a, short=False)} instead of {describe_setting(key, value_b, short=False)}"


def _p_text(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"
