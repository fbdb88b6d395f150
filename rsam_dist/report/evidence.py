"""report.md's sections on evidence: the verdict against the paper, the differences between arms,
and each trial's measured time beside the plan's estimate. The numbers come from `stats` and
results.csv; this module holds the wording.
"""

from __future__ import annotations

from rsam_dist.report.analysis import format_value
from rsam_dist.report.stats import MIN_REPLICATES, arm_differences, paper_comparison
from rsam_dist.sweep.results import SweepResults


def verdict_lines(results: SweepResults) -> list[str]:
    """The paper verdict, one bold line and what it rests on."""
    comparison = paper_comparison(results)
    return [
        f"**Verdict: {comparison.verdict}.** {_sentence(comparison.reason.split(': ', 1)[-1])}",
        "",
        f"- The verdict uses the final test top-1 of the completed trials in the paper's setting, over seeds: "
        f"\"reproduced\" when the paper's value lies in the 95% confidence interval of the mean (Student's t) "
        f"or the mean is above it, \"too thin\" with fewer than {MIN_REPLICATES} seeds.",
    ]


def section_differences(results: SweepResults) -> list[str]:
    lines = ["", "## Differences between arms", ""]
    differences = arm_differences(results)
    if not differences:
        return lines + ["No two arms differ in a single searched key with completed trials in both, so there is "
                        "nothing to test."]
    if all(difference.thin for difference in differences):
        return lines + [f"No difference is tested: no arm has {MIN_REPLICATES} completed seeds (set `seeds: "
                        f"{MIN_REPLICATES}` or more). The differences of the means, for orientation only:", ""] + [
            f"- {_sentence(difference.claim)}" for difference in differences]
    lines += [f"- {_sentence(difference.sentence)}" for difference in differences]
    return lines + [
        "",
        "Points are percentage points of final test top-1. Each interval is the 95% confidence interval of the "
        "difference of the two arms' means; p is the two-sided p-value of Welch's t-test (no equal-variance "
        f"assumption). With fewer than {MIN_REPLICATES} seeds per arm no test is made. Many comparisons at once: "
        "expect about one in twenty to reach p < 0.05 by chance.",
    ]


def section_time(results: SweepResults) -> list[str]:
    """Each trial's measured time and GPU-hours beside the plan's estimate."""
    from rsam_dist.plan.record import gpu_hours, read_plan_record
    from rsam_dist.plan.render import duration

    timed = [t for t in results.trials if t.seconds is not None or t.estimated_seconds is not None]
    lines = ["", "## Time: measured against the plan", ""]
    if not timed:
        return lines + ["No trial time was recorded (results.csv has no seconds column: a sweep from before plans "
                        "were kept)."]
    keys = list(results.spec.search)
    header = ["trial", *(key.rsplit(".", 1)[-1] for key in keys), "seed", "status", "measured", "estimated",
              "measured / estimated", "GPU-hours"]
    rows = []
    for trial in timed:
        ratio = (f"{trial.seconds / trial.estimated_seconds:.2f}"
                 if trial.seconds and trial.estimated_seconds else "—")
        hours = gpu_hours(results.spec, trial.seconds)
        rows.append([trial.trial_id, *(format_value(results.value(trial, key)) for key in keys),
                     str(trial.params.get("train.seed")), trial.status.replace("_", " "), duration(trial.seconds),
                     duration(trial.estimated_seconds), ratio, "—" if hours is None else f"{hours:.3f}"])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    both = [t for t in timed if t.seconds and t.estimated_seconds and t.status == "completed"]
    if both:
        measured = sum(t.seconds for t in both)
        estimated = sum(t.estimated_seconds for t in both)
        lines += ["", f"Over the {len(both)} completed trial(s): measured {duration(measured)}, estimated "
                      f"{duration(estimated)} (ratio {measured / estimated:.2f})."]
    plan = read_plan_record(results.directory)
    if plan:
        lines += ["", f"The plan (`plan.yaml`, made {plan.get('planned_at')} on {plan.get('target')}): "
                      f"`{plan.get('summary')}`"]
    lines += ["", "Measured: from a trial's start to its last report (Tune's time_total_s); it includes the trial's "
                  "start-up, and on a shared machine the load of everything else that ran."]
    return lines


def _sentence(text: str) -> str:
    """`text` with a capital first letter and a full stop."""
    return f"{text[:1].upper()}{text[1:]}."
