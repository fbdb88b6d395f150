"""Every trial a sweep (or a training config) would run, with its settings, seed, epochs and shape.

A sweep runs `len(grid_points()) * num_samples` trials: every combination of the grid keys' values
and the seeds, each `num_samples` times (random and optuna draw the other keys per trial). A
drawn key that changes the cost of a step (the model's shape, the batch, the data) makes the
trial's time a range: `variants` holds the config at each listed value (or at both ends of a
range), and the plan quotes the slowest.

    from rsam_dist.plan.trials import sweep_trials
    [(t.number, t.fixed) for t in sweep_trials(load_sweep("sweeps/demo.yaml"))]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from rsam_dist.config import Config
from rsam_dist.sweep.config import Distribution, ResolvedSweep

COST_PREFIXES = ("model.glimpses", "model.hidden_size", "model.feedback", "model.attention_input",
                 "optim.batch_size", "data.", "train.epochs", "scaling.")
"""Config keys that change what a trial costs (its step, its epochs, its data); other keys do not."""


@dataclass(frozen=True)
class TrialShape:
    """What one trial asks Ray for: `num_workers` bundles of (CPUs, GPUs)."""

    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def gpus(self) -> float:
        return self.num_workers * self.gpus_per_worker

    @property
    def cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def share_a_gpu(self) -> int:
        """How many such trials share one GPU (1 for whole GPUs, 0 for CPU trials)."""
        if not self.gpus_per_worker:
            return 0
        return max(1, int(1 / self.gpus_per_worker + 1e-9)) if self.gpus_per_worker < 1 else 1

    def describe(self) -> str:
        gpus = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ", no GPU"
        return f"{self.num_workers} worker(s) x ({self.cpus_per_worker:g} CPU{gpus})"

    @classmethod
    def of(cls, config: Config) -> TrialShape:
        scaling = config.scaling
        return cls(scaling.num_workers, scaling.cpus_per_worker, scaling.gpus_per_worker)


@dataclass
class PlannedTrial:
    number: int
    """1-based, in the order Tune is given them."""
    fixed: dict[str, Any]
    """The values this trial is given: grid keys and train.seed (dotted keys)."""
    drawn: dict[str, Distribution]
    """Keys drawn per trial (random, optuna), with what they are drawn from."""
    config: Config
    """The training config with `fixed` applied (drawn keys at the base config's values)."""
    variants: list[Config] = field(default_factory=list)
    """The configs whose time bounds this trial's (one, unless a drawn key changes the cost)."""

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def epochs(self) -> int:
        return self.config.train.epochs

    @property
    def shape(self) -> TrialShape:
        return TrialShape.of(self.config)


def changes_cost(key: str) -> bool:
    return any(key == prefix or (prefix.endswith(".") and key.startswith(prefix)) for prefix in COST_PREFIXES)


def sweep_trials(sweep: ResolvedSweep) -> list[PlannedTrial]:
    """The sweep's trials (its `trial:` shape already settled for where it runs)."""
    spec = sweep.spec
    drawn = {key: dist for key, dist in spec.search.items() if key not in spec.grid_keys}
    costly = {key: _values_bounding_cost(dist) for key, dist in drawn.items() if changes_cost(key)}
    trials = []
    for point in spec.grid_points():
        config = sweep.trial_config(point)
        variants = [sweep.trial_config({**point, **dict(zip(costly, combo, strict=True))})
                    for combo in itertools.product(*costly.values())] if costly else [config]
        for _ in range(spec.num_samples):
            trials.append(PlannedTrial(len(trials) + 1, dict(point), drawn, config, variants))
    return trials


def config_trial(config: Config) -> list[PlannedTrial]:
    """A training config is one trial."""
    return [PlannedTrial(1, {"train.seed": config.train.seed}, {}, config, [config])]


def _values_bounding_cost(distribution: Distribution) -> list[Any]:
    """The values of a drawn key whose costs bound every draw: each listed value, or a range's ends."""
    if distribution.listed is not None:
        return list(distribution.listed)
    low, high = distribution.uniform or distribution.loguniform or distribution.int
    return [low, high]
