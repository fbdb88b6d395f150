"""The plan kept beside a sweep's results, so that each trial's measured time stands next to its estimate.

`rsam-dist sweep` writes <sweep dir>/plan.yaml before it starts; the results writer reads it back
and puts `estimated_seconds` and `estimated_gpu_hours` beside each trial's measured `seconds` and
`gpu_hours` in results.csv, and the report compares them.

    plan.yaml
        summary: the one line printed before the sweep
        wall_seconds / expected_wall_seconds / at_once / planned_at / target
        trials: [{match: {model.glimpses: 1, train.seed: 0}, seconds: 81.2, expected_seconds: 81.2}, ...]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rsam_dist.runs import write_bytes
from rsam_dist.sweep.config import ResolvedSweep, SweepConfig

PLAN_FILE = "plan.yaml"


def plan_before_sweep(
    sweep: ResolvedSweep, sweep_file: str, overrides: tuple[str, ...], address: str | None
) -> tuple[str, Callable[[], None] | None]:
    """The plan's one line, printed before a sweep starts (pre-flight failures stop it here, as a
    UserError), and a function that keeps the plan in the sweep directory, for the sweep to call
    once its own checks have passed (a refused sweep leaves nothing behind).

    For a cluster given by its Ray address the sweep cannot see the cluster before it connects, so
    the line names the trials and says how to plan the rest."""
    if address:
        trials = len(sweep.spec.grid_points()) * sweep.spec.num_samples
        return (f"plan: {trials} trial(s) on the Ray cluster at {address}; for time and cost: rsam-dist plan "
                f"{sweep_file} --address DASHBOARD_URL (or --cluster CLUSTER.yaml)"), None
    from rsam_dist.plan.planner import make_plan

    plan = make_plan(sweep_file, overrides)
    return plan.summary(), lambda: write_plan_record(plan, sweep.directory)


def write_plan_record(plan, directory: Path) -> None:
    record = {
        "summary": plan.summary(),
        "planned_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "planned_at_unix": time.time(),
        "overhead_scale": plan.timer.overhead_scale if plan.timer else None,
        "reference_step_s": _reference_step_seconds(plan),
        "target": plan.target.label,
        "at_once": plan.capacity.at_once if plan.capacity else None,
        "wall_seconds": plan.wall_seconds,
        "expected_wall_seconds": plan.expected_wall_seconds,
        "trials": [{"match": estimate.trial.fixed, "seconds": estimate.seconds,
                    "expected_seconds": estimate.expected_seconds} for estimate in plan.estimates],
    }
    write_bytes(str(directory / PLAN_FILE), yaml.safe_dump(record, sort_keys=False).encode())


def _reference_step_seconds(plan) -> float | None:
    """The reference step timed for this plan (benchmarks/calibrate_overheads.py reads it back)."""
    setting = plan.timer.reference_setting() if plan.timer else None
    return None if setting is None else plan.timer.steps.figure(setting).timing.train_step_s


def read_plan_record(directory: str | Path) -> dict[str, Any] | None:
    """plan.yaml of a sweep directory, or None (a sweep started before plans were kept, or a URI)."""
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return record if isinstance(record, dict) else None


def estimated_seconds(record: dict[str, Any] | None, params: dict[str, Any]) -> float | None:
    """The planned time of the trial with these params (ASHA's expected time under ASHA)."""
    if not record:
        return None
    for row in record.get("trials") or []:
        match = row.get("match") or {}
        if all(params.get(key) == value for key, value in match.items()):
            return row.get("expected_seconds", row.get("seconds"))
    return None


def gpu_hours(spec: SweepConfig, seconds: float | None) -> float | None:
    """GPU-hours a trial of this sweep holds over `seconds` (0 for CPU trials)."""
    if seconds is None:
        return None
    trial = spec.trial
    gpus = trial.gpus_per_worker if isinstance(trial.gpus_per_worker, (int, float)) else 0.0
    return seconds * trial.num_workers * gpus / 3600
