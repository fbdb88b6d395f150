"""Time per trial and for the whole sweep, and how many trials run at once, from measured figures only.

A trial's time is `trial start + epochs x (steps x step time + test images x eval time + per-epoch
extras)`. Where the figures come from depends on where it runs:
- this machine: the step is timed here now (`measure`), the fixed costs are the ones measured on
  this kind of machine (throughput.yaml `local_overheads`);
- a cluster's CPU nodes: the step timed here, scaled to the trial's threads (an estimate: it
  assumes the nodes' cores are as fast as these); trial start-up there is not known and left out;
- a cluster's GPUs: the throughput table's figure for exactly that GPU type and setting, else
  "unknown" (never a neighbour's figure, never a guess).
The sweep's wall time is the trials laid out in order over the slots that run at once (what Tune
does); with ASHA it is an upper bound (every trial runs all epochs) beside the time ASHA takes if
it stops trials at each rung as designed.

    from rsam_dist.plan.estimate import asha_expected_epochs
    asha_expected_epochs(max_t=20, grace_period=2, reduction_factor=2)     # 5.25
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache

from rsam_dist.config import Config, DataConfig
from rsam_dist.plan.catalog import LocalOverheads, ThroughputTable
from rsam_dist.plan.measure import StepSetting, StepTiming, measure_steps
from rsam_dist.plan.targets import NodeType, Target
from rsam_dist.plan.trials import PlannedTrial, TrialShape
from rsam_dist.ray_cluster import TRIAL_DRIVER_RESOURCE
from rsam_dist.sweep.config import SchedulerConfig

CIFAR10_TRAIN = 50_000  # the fixed CIFAR-10 split (torchvision's cifar-10-batches-py)
CIFAR10_TEST = 10_000
REFERENCE_SETTING = StepSetting(glimpses=2, hidden_size=64, feedback=True, attention_input="downsample", batch=128,
                                threads=1, device="cpu")
"""The reference step (the debug model's) that calibrates fixed costs to this machine's speed."""
INTERPOLATE_FROM = 3
"""With this many glimpse counts of one otherwise equal setting, time the fewest and the most and
interpolate between them: the step is linear in the glimpse count (one down-sample pass per batch,
then the same work per glimpse)."""


# --- the data ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSize:
    train: int
    test: int
    source: str


def dataset_size(data: DataConfig) -> DatasetSize:
    """Train and test images of `data`, limits applied, read from the dataset where that is cheap."""
    if data.name == "cifar10":
        train, test, source = CIFAR10_TRAIN, CIFAR10_TEST, "CIFAR-10's fixed split"
    elif data.name == "digits":
        train, test = _digits_size(data.split_seed)
        source = "scikit-learn's digits, split 80/20"
    else:
        train, test, source = data.synthetic_train_size, data.synthetic_test_size, "synthetic, as configured"
    limited = [name for name, limit in (("data.limit_train", data.limit_train), ("data.limit_test", data.limit_test))
               if limit is not None]
    if limited:
        source += f", cut by {' and '.join(limited)}"
    return DatasetSize(min(train, data.limit_train or train), min(test, data.limit_test or test), source)


@lru_cache(maxsize=4)
def _digits_size(split_seed: int) -> tuple[int, int]:
    from rsam_dist.data import load_digits

    dataset = load_digits(DataConfig(name="digits", split_seed=split_seed))
    return len(dataset.train), len(dataset.test)


# --- ASHA -------------------------------------------------------------------------------------------


def asha_expected_epochs(max_t: int, grace_period: int, reduction_factor: float) -> float:
    """Mean epochs per trial when ASHA keeps the top 1/reduction_factor at every rung (its rungs
    are grace_period x rf^k below max_t): every trial runs to the first rung, 1/rf of them to the
    next, and so on; those past the last rung run to max_t."""
    epochs, reached, previous, k = 0.0, 1.0, 0, 0
    while (rung := math.ceil(grace_period * reduction_factor**k)) < max_t:
        epochs += reached * (rung - previous)
        reached /= reduction_factor
        previous, k = rung, k + 1
    return epochs + reached * (max_t - previous)


def planned_epochs(config: Config, scheduler: SchedulerConfig | None) -> float:
    """Expected epochs of a trial: all of them under FIFO, ASHA's mean under ASHA."""
    epochs = config.train.epochs
    if scheduler is None or scheduler.type != "asha":
        return float(epochs)
    return asha_expected_epochs(epochs, scheduler.grace_period, scheduler.reduction_factor)


# --- the step ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepFigure:
    timing: StepTiming
    how: str
    """'measured here', 'interpolated between N and M glimpses', or a scaled estimate's words."""


class StepTimer:
    """Times each distinct step setting once (interpolating glimpse counts where that is exact
    enough), within about `budget_s` seconds per timed setting."""

    def __init__(self, budget_s: float = 1.0):
        self.budget_s = budget_s
        self.figures: dict[StepSetting, StepFigure] = {}
        self.seconds_spent = 0.0

    def prepare(self, settings: set[StepSetting]) -> None:
        import time

        started = time.perf_counter()
        groups: dict[StepSetting, set[int]] = defaultdict(set)
        for setting in settings:
            groups[setting.with_glimpses(0)].add(setting.glimpses)
        ends = {base: (min(counts), max(counts)) if len(counts) >= INTERPOLATE_FROM else tuple(sorted(counts))
                for base, counts in groups.items()}
        to_time = sorted({base.with_glimpses(count) for base, pair in ends.items() for count in pair}
                         - set(self.figures))
        if to_time:
            for setting, timing in measure_steps(to_time, self.budget_s).items():
                self.figures[setting] = StepFigure(timing, "measured here")
        for base, counts in groups.items():
            if len(counts) < INTERPOLATE_FROM:
                continue
            low_count, high_count = ends[base]
            low, high = (self.figures[base.with_glimpses(count)].timing for count in ends[base])
            for count in counts - {low_count, high_count}:
                share = (count - low_count) / (high_count - low_count)
                self.figures.setdefault(base.with_glimpses(count), StepFigure(StepTiming(
                    low.train_step_s + share * (high.train_step_s - low.train_step_s),
                    low.eval_image_s + share * (high.eval_image_s - low.eval_image_s), 0),
                    f"interpolated between {low_count} and {high_count} glimpses"))
        self.seconds_spent += time.perf_counter() - started

    def figure(self, setting: StepSetting) -> StepFigure:
        if setting not in self.figures:
            self.prepare({setting})
        return self.figures[setting]


# --- one trial ------------------------------------------------------------------------------------


@dataclass
class TrialEstimate:
    trial: PlannedTrial
    seconds: float | None
    """All planned epochs (the slowest variant); None: unknown."""
    expected_seconds: float | None
    """With ASHA's expected epochs (the same as `seconds` under FIFO)."""
    basis: str
    """Where the figure comes from, in words; for None, why it is unknown."""
    epoch_seconds: float | None = None
    unknown: str | None = None
    """For an unknown time: why, in a few words ("no measured A10G figure")."""


def cpu_epoch_seconds(config: Config, timing: StepTiming, size: DatasetSize, epoch_extra_s: float) -> float:
    """One epoch: the training steps, this worker's share of the test set and the mask probe, and the extras."""
    steps = size.train // config.optim.batch_size  # the last incomplete batch is dropped
    test_share = math.ceil(size.test / config.scaling.num_workers)
    probe = min(config.train.mask_images, size.test)
    return steps * timing.train_step_s + (test_share + probe) * timing.eval_image_s + epoch_extra_s


@dataclass
class TrialTimer:
    """Estimates trials for one target: measured steps for CPUs, the throughput table for GPUs."""

    target: Target
    table: ThroughputTable
    steps: StepTimer
    scheduler: SchedulerConfig | None = None
    local_cpus: int = 1
    """Threads this machine can time a step with (a node's thread count above it is scaled to)."""
    overhead_scale: float = 1.0
    """This machine's speed now against when the overheads were measured (reference step, now / then)."""

    @property
    def overheads(self) -> LocalOverheads | None:
        if not self.target.is_local or self.table.local_overheads is None:
            return None
        measured = self.table.local_overheads
        return measured.model_copy(update={name: getattr(measured, name) * self.overhead_scale
                                           for name in ("sweep_start_s", "trial_start_s", "epoch_extra_s")})

    def reference_setting(self) -> StepSetting | None:
        """The step timed with the overheads, to time again now (local plans only; recorded in
        plan.yaml, where benchmarks/calibrate_overheads.py reads it)."""
        if not self.target.is_local:
            return None
        if self.table.local_overheads is None:
            return REFERENCE_SETTING
        ref = self.table.local_overheads.reference
        return StepSetting(ref.glimpses, ref.hidden_size, ref.feedback, ref.attention_input, ref.batch, ref.threads,
                           "cpu")

    def scale_overheads(self) -> None:
        """Set overhead_scale from the reference step timed now (call after the steps were timed)."""
        setting = self.reference_setting()
        if setting is not None and self.table.local_overheads is not None:
            now = self.steps.figure(setting).timing.train_step_s
            self.overhead_scale = now / self.table.local_overheads.reference.train_step_s

    def runs_on_gpu(self, config: Config) -> bool:
        return config.scaling.gpus_per_worker > 0

    def step_setting(self, config: Config) -> StepSetting:
        setting = StepSetting.of(config, "cuda" if self.target.is_local and self.runs_on_gpu(config) else "cpu")
        if not self.target.is_local:  # timed here with the threads we have; scaled in estimate()
            setting = StepSetting(**{**setting.__dict__, "threads": min(setting.threads, self.local_cpus)})
        return setting

    def settings_to_time(self, trials: list[PlannedTrial]) -> set[StepSetting]:
        return {self.step_setting(variant) for trial in trials for variant in trial.variants
                if self.target.is_local or not self.runs_on_gpu(variant)}

    def estimate(self, trial: PlannedTrial) -> TrialEstimate:
        results = [self._variant(variant) for variant in trial.variants]
        unknown = next((r for r in results if r[0] is None), None)
        if unknown is not None:
            short, _, long = unknown[2].partition(": ")
            return TrialEstimate(trial, None, None, long, unknown=short)
        slowest = max(results, key=lambda r: r[0])
        seconds, epoch_seconds, basis = slowest
        start = self.overheads.trial_start_s if self.overheads else 0.0
        expected = start + planned_epochs(trial.config, self.scheduler) * epoch_seconds
        if len(results) > 1:
            basis += f"; the slowest of {len(results)} drawn settings"
        return TrialEstimate(trial, seconds, expected, basis, epoch_seconds)

    def _variant(self, config: Config) -> tuple[float | None, float | None, str]:
        size = dataset_size(config.data)
        start = self.overheads.trial_start_s if self.overheads else 0.0
        extra = self.overheads.epoch_extra_s if self.overheads else 0.0
        if self.runs_on_gpu(config) and not self.target.is_local:
            return self._gpu_variant(config, size)
        setting = self.step_setting(config)
        figure = self.steps.figure(setting)
        timing, basis = figure.timing, figure.how
        wanted = max(1, int(config.scaling.cpus_per_worker))
        if not self.target.is_local:
            if wanted != setting.threads:
                scale = setting.threads / wanted
                timing = StepTiming(timing.train_step_s * scale, timing.eval_image_s * scale, timing.timed_steps)
                basis = f"estimate: step {basis} with {setting.threads} thread(s), scaled to {wanted}"
            else:
                basis = f"estimate: step {basis}, assuming the node's cores are as fast as this machine's"
            basis += "; trial start-up on the cluster not included (not measured)"
        epoch = cpu_epoch_seconds(config, timing, size, extra)
        return start + config.train.epochs * epoch, epoch, basis

    def _gpu_variant(self, config: Config, size: DatasetSize) -> tuple[float | None, float | None, str]:
        shape = TrialShape.of(config)
        gpu_names = sorted({node.gpu for node in self.target.nodes if node.gpus and node.gpu})
        if not gpu_names:
            return None, None, "GPU type unknown: the cluster's GPU type is not known from here"
        if shape.num_workers > 1:
            return None, None, ("no measured figure for DDP trials on GPUs: throughput.yaml holds single-worker "
                                "trials only")
        model = config.model
        for gpu in gpu_names:
            row = self.table.gpu_figure(gpu, model.glimpses, model.hidden_size, model.feedback,
                                        model.attention_input, config.optim.batch_size, shape.share_a_gpu or 1)
            if row is not None:
                steps = size.train // config.optim.batch_size
                epoch = steps * config.optim.batch_size / row.train_images_per_s + size.test / row.eval_images_per_s
                basis = (f"measured on {row.gpu} ({row.source}, {row.as_of}); trial start-up on the cluster "
                         "not included")
                return config.train.epochs * epoch, epoch, basis
        measured = ", ".join(self.table.gpu_types()) or "none yet"
        gpus = "/".join(gpu_names)
        return None, None, (f"no measured {gpus} figure: rsam_dist/plan/throughput.yaml has no {gpus} row for "
                            f"this setting (GPUs measured so far: {measured})")


# --- how many at once ---------------------------------------------------------------------------------


@dataclass
class Capacity:
    at_once: int
    """Trials that run at the same time."""
    limit: str
    """What limits it, in words."""
    nodes_used: dict[str, int] = field(default_factory=dict)
    """Node type name -> nodes up while that many trials run (the head included)."""
    room: int = 0
    """Trials the nodes alone could hold (before driver slots and max_concurrent_trials)."""


def bundles_per_node(node: NodeType, shape: TrialShape) -> int | None:
    """Worker bundles of `shape` one node holds; None when its size is unknown."""
    if node.cpus is None or node.gpus is None:
        return None
    fits = node.cpus // shape.cpus_per_worker
    if shape.gpus_per_worker:
        fits = min(fits, node.gpus // shape.gpus_per_worker)
    return int(fits)


def capacity(target: Target, shape: TrialShape, trials: int, max_concurrent: int | None) -> Capacity | None:
    """How many trials of `shape` run at once on `target` (at its largest); None if node sizes are unknown."""
    # The head first (it is up anyway), then CPU-only worker types, then GPU ones.
    order = sorted(target.nodes, key=lambda n: (not n.is_head, bool(n.gpus) and not shape.gpus_per_worker))
    per_node = {node.name: bundles_per_node(node, shape) for node in order}
    usable = [node for node in order if per_node[node.name]]
    if not usable and any(value is None for value in per_node.values()):
        return None
    everything = _nodes_for(math.inf, usable, per_node, target)
    room = sum(count * (per_node[name] or 0) for name, count in everything.items()) // shape.num_workers
    drivers = int(sum(node.custom.get(TRIAL_DRIVER_RESOURCE, 0) for node in target.nodes))
    limits = [(room, _room_words(target, shape, usable)),
              (drivers, f"the head's {drivers} {TRIAL_DRIVER_RESOURCE} slots (one per running trial)"),
              (trials, f"the sweep's {trials} trial(s)")]
    if max_concurrent is not None:
        limits.append((max_concurrent, f"max_concurrent_trials {max_concurrent}"))
    at_once, limit = min(limits, key=lambda item: item[0])
    return Capacity(int(at_once), limit, _nodes_for(at_once * shape.num_workers, usable, per_node, target), int(room))


def _room_words(target: Target, shape: TrialShape, usable: list[NodeType]) -> str:
    if not usable:
        need = f"{shape.gpus_per_worker:g} GPU" if shape.gpus_per_worker else f"{shape.cpus_per_worker:g} CPUs"
        return f"no node with {need} per worker"
    resource = "GPUs and CPUs" if shape.gpus_per_worker else "CPUs"
    if target.is_local:
        return f"this machine's {resource}"
    if target.kind == "address":
        return f"the {resource} of the cluster's live nodes"
    return f"the {resource} of the cluster's nodes at max_workers"


def _nodes_for(bundles: float, usable: list[NodeType], per_node: dict[str, int | None],
               target: Target) -> dict[str, int]:
    """Nodes up while `bundles` worker bundles run: the head and min_workers nodes, then more
    workers in order, within each type's max_workers and the cluster's."""
    used = {node.name: (1 if node.is_head else node.min_count) for node in target.nodes}
    worker_cap = target.max_workers if target.max_workers is not None else math.inf
    workers_up = sum(count for node in target.nodes if not node.is_head for count in [used[node.name]])
    left = bundles
    for node in usable:
        size = per_node[node.name] or 0
        left -= used[node.name] * size
        while left > 0 and not node.is_head and used[node.name] < node.max_count and workers_up < worker_cap:
            used[node.name] += 1
            workers_up += 1
            left -= size
    return {name: count for name, count in used.items() if count}


# --- the whole sweep --------------------------------------------------------------------------------


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of running `durations` in order, each on the first slot to free up (what Tune does)."""
    if not durations:
        return 0.0
    free = [0.0] * max(1, min(slots, len(durations)))
    for duration in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + duration)
    return max(free)
