"""`make_plan`: a sweep file or training config, and where it would run, turned into a `Plan`.

No Ray is started and no cloud is touched: a cluster is read from its launcher file (or from a
running cluster's dashboard over HTTP), the step is timed in this process.

    from rsam_dist.plan.planner import make_plan
    plan = make_plan("sweeps/glimpses.yaml", cluster="cluster/aws-gpu.yaml")
    print(plan.summary())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rsam_dist.config import Config, apply_overrides, read_yaml, validate_dict
from rsam_dist.errors import UserError
from rsam_dist.plan import preflight
from rsam_dist.plan.catalog import ThroughputTable, load_throughput
from rsam_dist.plan.costs import CostEstimate, cluster_cost
from rsam_dist.plan.estimate import (
    Capacity,
    DatasetSize,
    StepTimer,
    TrialEstimate,
    TrialTimer,
    capacity,
    dataset_size,
    makespan,
)
from rsam_dist.plan.targets import Target, address_target, cluster_target, local_cpu_count, local_target
from rsam_dist.plan.trials import PlannedTrial, TrialShape, config_trial, sweep_trials
from rsam_dist.sweep.config import ResolvedSweep, load_sweep
from rsam_dist.worker_cpus import settle_cpus

MEASURE_BUDGET_S = 1.0
"""Seconds of timed steps per distinct step setting (at least two steps are timed)."""


@dataclass
class Plan:
    source: str
    kind: str
    """'sweep' or 'train'."""
    target: Target
    trials: list[PlannedTrial]
    estimates: list[TrialEstimate]
    shape: TrialShape
    capacity: Capacity | None
    dataset: DatasetSize
    wall_seconds: float | None
    """Every trial running all its epochs, in order over the slots, plus the sweep's start (locally)."""
    expected_wall_seconds: float | None
    """The same with ASHA's expected epochs (equal to wall_seconds under FIFO)."""
    cost: CostEstimate | None
    checks: list[preflight.Check]
    warnings: list[str] = field(default_factory=list)
    sweep: ResolvedSweep | None = None
    config: Config | None = None
    measure_seconds: float = 0.0
    sweep_start_s: float = 0.0
    timer: TrialTimer | None = None

    @property
    def gpu_hours(self) -> float | None:
        """GPU-hours the trials hold (their share of each GPU, over their estimated time)."""
        if not self.shape.gpus:
            return 0.0
        seconds = [estimate.expected_seconds for estimate in self.estimates]
        return None if any(s is None for s in seconds) else sum(seconds) * self.shape.gpus / 3600

    @property
    def asha(self) -> bool:
        return self.sweep is not None and self.sweep.spec.scheduler.type == "asha"

    def summary(self) -> str:
        from rsam_dist.plan.render import summary_line

        return summary_line(self)

    def text(self) -> str:
        from rsam_dist.plan.render import plan_text

        return plan_text(self)


def make_plan(path: str | Path, overrides: tuple[str, ...] | list[str] = (), cluster: str | None = None,
              address: str | None = None, budget_s: float = MEASURE_BUDGET_S,
              table: ThroughputTable | None = None) -> Plan:
    """The plan of a sweep file or training config at `path`, on this machine, a cluster file or a running cluster."""
    if cluster and address:
        raise UserError("give --cluster FILE or --address URL, not both")
    raw = read_yaml(path)
    from rsam_dist.validation import file_kind

    kind = file_kind(raw)
    if kind == "cluster":
        raise UserError(f"{path} is a cluster file: plan a sweep or training config on it with "
                        f"`rsam-dist plan SWEEP.yaml --cluster {path}`")
    target = cluster_target(cluster) if cluster else address_target(address) if address else local_target()
    checks = [preflight.Check("cluster file", f"{cluster}: valid (Ray's schema, rsam-dist's rules)")] if cluster else []
    table = table or load_throughput()
    warnings: list[str] = []
    sweep = None
    if kind == "sweep":
        sweep = load_sweep(path, overrides).for_cluster(_gpus_for_auto(target))
        trials, config = sweep_trials(sweep), sweep.base
        warnings += _sweep_start_warnings(sweep, target)
    else:
        config = validate_dict(Config, apply_overrides(raw, list(overrides)), str(path))
        config = settle_cpus(config, _node_resources(target))
        trials = config_trial(config)
    shape = max({trial.shape for trial in trials}, key=lambda s: (s.gpus, s.cpus))
    if len({trial.shape for trial in trials}) > 1:
        warnings.append(f"trials differ in shape; the plan packs them all as the largest, {shape.describe()}")

    checks.append(preflight.check_shape(target, shape, sweep=sweep is not None))
    sizes = {trial.config.data.model_dump_json(): dataset_size(trial.config.data) for trial in trials}
    for trial in trials:
        preflight.check_batches(trial.config, sizes[trial.config.data.model_dump_json()])
    checks.append(preflight.check_dataset(config, target))
    if sweep is not None:
        from rsam_dist.sweep.results import SWEEP_FILE

        checks.append(preflight.check_storage(sweep.spec.storage, target, "sweep storage",
                                              existing=sweep.directory / SWEEP_FILE if target.is_local else None))
    else:
        checks.append(preflight.check_storage(config.train.storage, target, "train.storage"))

    timer = TrialTimer(target, table, StepTimer(budget_s), sweep.spec.scheduler if sweep else None,
                       local_cpus=local_cpu_count())
    reference = timer.reference_setting()
    timer.steps.prepare(timer.settings_to_time(trials) | ({reference} if reference else set()))
    timer.scale_overheads()
    estimates = [timer.estimate(trial) for trial in trials]
    max_concurrent = sweep.spec.max_concurrent_trials if sweep else 1
    room = capacity(target, shape, len(trials), max_concurrent)
    start = timer.overheads.sweep_start_s if timer.overheads else 0.0
    wall = expected = None
    if room is not None and room.at_once and all(e.seconds is not None for e in estimates):
        wall = start + makespan([e.seconds for e in estimates], room.at_once)
        expected = start + makespan([e.expected_seconds for e in estimates], room.at_once)
    cost = None
    if not target.is_local and room is not None:
        cost = cluster_cost(target, room.nodes_used, None if expected is None else expected / 3600)
    return Plan(str(path), kind, target, trials, estimates, shape, room, next(iter(sizes.values())), wall, expected,
                cost, checks, warnings, sweep, config, timer.steps.seconds_spent, start, timer)


def _node_resources(target: Target) -> list[dict[str, float]]:
    """The nodes `scaling.cpus_per_worker: auto` is settled against: each node type the target may
    hold (this machine's CPUs where the target is local and its table does not know them)."""
    nodes = [{"CPU": node.cpus, "GPU": node.gpus or 0.0} for node in target.nodes if node.cpus]
    return nodes or [{"CPU": float(local_cpu_count())}]


def _gpus_for_auto(target: Target) -> float:
    """The GPUs `trial.gpus_per_worker: auto` is settled against: the target's, at its largest."""
    return target.max_gpus


def _sweep_start_warnings(sweep: ResolvedSweep, target: Target) -> list[str]:
    """Where `rsam-dist sweep` would not do what this plan assumes, because it sizes itself from
    the nodes that are up when it starts (an autoscaling cluster's head alone)."""
    if target.kind != "cluster":
        return []
    warnings = []
    gpu_types = [node for node in target.nodes if node.gpus and not node.is_head]
    if gpu_types and all(node.min_count == 0 for node in gpu_types) and not any(
            node.gpus for node in target.nodes if node.is_head):
        warnings.append(
            "rsam-dist sweep settles trial GPUs from the GPUs up when it starts, and no GPU node is up at "
            "start here (min_workers 0): with gpus_per_worker auto its trials would train on the head's CPUs, "
            "with a number it refuses to start; set min_workers: 1 on "
            + ", ".join(node.name for node in gpu_types) + " (or start a GPU node first)")
    if sweep.spec.max_concurrent_trials is None:
        head = target.head
        warnings.append(
            "rsam-dist sweep sizes max_concurrent_trials from the nodes up when it starts"
            f"{f' ({head.name} alone here)' if all(n.min_count == 0 for n in target.nodes if not n.is_head) else ''}"
            "; set max_concurrent_trials in the sweep file (or --set max_concurrent_trials=N) to the "
            "plan's trials at once")
    return warnings


