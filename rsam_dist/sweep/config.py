"""The sweep file: a base training config plus what to search, how, and with what resources.

    name: glimpses
    base: ../configs/cifar10.yaml        # a path (relative to this file) or an inline mapping
    set: {train.epochs: 20}              # overrides on the base, like --set
    search:
      model.glimpses: {grid: [1, 2, 3, 4, 5, 6, 7, 8]}
      optim.lr: {loguniform: [0.001, 0.1]}
    seeds: [0]                           # or a count: `seeds: 5` is [0, 1, 2, 3, 4]
    algorithm: grid                      # grid | random | optuna (TPE)
    startup_trials: 10                   # optuna: random trials before TPE takes over
    scheduler: {type: fifo}              # or {type: asha, grace_period: 2, reduction_factor: 2}
    trial: {num_workers: 1, gpus_per_worker: 0.25}

`rsam-dist sweep FILE --set k=v`: a key naming a sweep field (num_samples=4, scheduler.type=asha)
changes the sweep; any other key (train.epochs=1, data.name=digits) changes the base config.
"""

from __future__ import annotations

import builtins
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from rsam_dist.config import (
    NAME_PATTERN,
    Config,
    Section,
    apply_overrides,
    apply_values,
    describe_validation_error,
    parse_override,
    read_yaml,
    shown,
    validate_dict,
)
from rsam_dist.errors import UserError
from rsam_dist.metrics import glimpse_of, optimisable_metrics
from rsam_dist.runs import is_uri


class Distribution(Section):
    """Exactly one of these: how one config key is chosen per trial."""

    grid: list[Any] | None = None
    """Every value, in every combination with the other grid keys (an ablation, glimpse counts)."""
    choice: list[Any] | None = None
    """One value at random (or by TPE) per trial."""
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    # builtins.int: inside this class the name `int` is the field below, so a bare `int` in the
    # annotation would resolve to its default (None) and no value could ever validate.
    int: tuple[builtins.int, builtins.int] | None = None
    """An integer in [low, high] inclusive."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, int (got {given or 'none'})")
        for name in ("uniform", "loguniform", "int"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name}: low must be below high (got {list(bounds)})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform: bounds must be positive")
        if self.listed is not None and not self.listed:
            raise ValueError("needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def discrete(self) -> bool:
        """Its values are listed (grid, choice), rather than drawn from a range."""
        return self.kind in ("grid", "choice")

    @property
    def listed(self) -> list[Any] | None:
        """The values of a grid or choice, in the sweep file's order; None for a range."""
        return self.grid if self.grid is not None else self.choice

    def values_to_check(self) -> list[Any]:
        """Values that stand for every value a trial may get: each listed value; both bounds of a
        range; for `int` also low + 1 (a key that takes only multiples of 64 refuses it); for a
        float range also a draw between the bounds (a key that takes integers refuses it)."""
        if self.listed is not None:
            return list(self.listed)
        if self.int is not None:
            low, high = self.int
            return [low, high] + ([low + 1] if low + 1 < high else [])
        return [*(self.uniform or self.loguniform), self.draw_between_bounds()]

    def draw_between_bounds(self) -> float | None:
        """A fractional value strictly inside a float range (uniform, loguniform), else None."""
        if self.uniform is not None:
            low, high = self.uniform
            return round(low + (high - low) / math.pi, 6)
        if self.loguniform is not None:
            low, high = self.loguniform
            return float(f"{low * (high / low) ** (1 / math.pi):.6g}")
        return None


class SchedulerConfig(Section):
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1)
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)
    """ASHA: keep the top 1/reduction_factor of trials at each rung."""


AUTO_GPU_SHARE = 0.25  # four small RSAM trials fit one GPU's memory and compute comfortably


class TrialResources(Section):
    """Each trial is a Ray Train run of this shape (it becomes the base config's `scaling`)."""

    num_workers: int = Field(1, ge=1)
    gpus_per_worker: Annotated[float, Field(ge=0)] | Literal["auto"] = 0.0
    """Fractions let several single-worker trials share one GPU (0.25: four per GPU). `auto`: 0.25
    for single-worker trials (1 for multi-worker ones) where the cluster has GPUs, else CPUs only."""
    cpus_per_worker: float = Field(1.0, gt=0)

    def resolved(self, cluster_gpus: float) -> TrialResources:
        if self.gpus_per_worker != "auto":
            return self
        share = 0.0 if cluster_gpus == 0 else (AUTO_GPU_SHARE if self.num_workers == 1 else 1.0)
        return self.model_copy(update={"gpus_per_worker": share})


class SweepConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    """The sweep directory's name under `storage` (letters, digits, . _ = -; no path)."""
    storage: str = "runs"
    """Where sweep directories go: a local directory (a shared one on a multi-node cluster). The
    sweep's results, its trials' runs and Tune's state are files there."""
    base: str | dict[str, Any] = Field(default_factory=dict)
    """The training config: a YAML path (relative to the sweep file) or an inline mapping."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Overrides applied to the base config, as with --set."""
    search: dict[str, Distribution] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Each configuration runs once per seed (train.seed). A list, or a count: `seeds: 5` is 0..4."""
    num_samples: int = Field(1, ge=1)
    """Samples drawn by random/optuna; with grid keys, each grid point is repeated this often."""
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    startup_trials: int = Field(10, ge=0)
    """optuna: trials drawn at random before TPE starts to model the results (Optuna's default, 10).
    A search of fewer trials than this never uses TPE at all."""
    scheduler: SchedulerConfig = SchedulerConfig()
    metric: str = "test_top1"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Trials at once; by default as many as the cluster's CPUs (or GPUs) fit."""
    trial: TrialResources = TrialResources()

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, value: Any) -> Any:
        """`seeds: N` (a count, for replication) means seeds 0..N-1."""
        if isinstance(value, bool) or not isinstance(value, int):
            return value  # a list (or a mistake the list type reports)
        if value < 1:
            raise ValueError(f"a count of seeds must be at least 1 (got {value})")
        return list(range(value))

    @model_validator(mode="after")
    def _check_algorithm(self) -> SweepConfig:
        if is_uri(self.storage):
            raise ValueError(f"storage {shown(self.storage)}: sweeps write to a local (or shared) directory, "
                             "not a URI")
        if self.algorithm == "grid":
            loose = [key for key, dist in self.search.items() if not dist.discrete]
            if loose:
                raise ValueError(
                    f"algorithm grid takes only grid/choice values, but {', '.join(loose)} "
                    "is a distribution: use algorithm random or optuna"
                )
        if "train.seed" in self.search:
            raise ValueError("search.train.seed: list the seeds under `seeds:` instead")
        return self

    @property
    def grid_keys(self) -> list[str]:
        """The keys whose every value is enumerated: grid keys, and choice keys of a grid sweep."""
        kinds = ("grid", "choice") if self.algorithm == "grid" else ("grid",)
        return [key for key, dist in self.search.items() if dist.kind in kinds]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid keys' values and the seeds."""
        keys = [*self.grid_keys, "train.seed"]
        values = [self.search[key].listed for key in self.grid_keys] + [self.seeds]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


class ResolvedSweep:
    """A validated sweep: its spec, the base training config, and where it writes."""

    def __init__(self, spec: SweepConfig, base: Config, source: str):
        self.spec = spec
        self.base = base
        self.source = source

    def for_cluster(self, cluster_gpus: float) -> ResolvedSweep:
        """This sweep with `gpus_per_worker: auto` settled for a cluster with that many GPUs."""
        trial = self.spec.trial.resolved(cluster_gpus)
        if trial.gpus_per_worker and not cluster_gpus:
            raise UserError(f"{self.source}: trial.gpus_per_worker is {trial.gpus_per_worker} but this Ray cluster "
                            "has no GPU: use a GPU cluster, or --set trial.gpus_per_worker=0")
        spec = self.spec.model_copy(update={"trial": trial})
        scaling = self.base.scaling.model_copy(update=trial.model_dump())
        return ResolvedSweep(spec, self.base.model_copy(update={"scaling": scaling}), self.source)

    @property
    def directory(self) -> Path:
        return (Path(self.spec.storage).expanduser() / self.spec.name).resolve()

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The base config with one trial's values (dotted keys) applied."""
        merged = apply_values(self.base.to_dict(), params, "trial")
        return validate_dict(Config, merged, f"{self.source} (trial {shown(params)})")

    def trial_problem(self, params: dict[str, Any]) -> str | None:
        """Why the base config with `params` applied is not a valid training config (one line), or None."""
        try:
            merged = apply_values(self.base.to_dict(), params, "search")
        except UserError as err:
            return str(err)
        try:
            Config.model_validate(merged)
        except ValidationError as err:
            return describe_validation_error(Config, err)
        return None

    def to_yaml(self) -> str:
        document = self.spec.model_dump(mode="json", exclude_none=True)
        document["storage"] = str(self.directory.parent)  # absolute: trials and --resume run elsewhere
        document["base"] = self.base.to_dict()
        document["set"] = {}
        return yaml.safe_dump(document, sort_keys=False)


def load_sweep(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> ResolvedSweep:
    path = Path(path)
    raw = read_yaml(path)
    sweep_fields = set(SweepConfig.model_fields)
    sweep_overrides = [text for text in overrides if parse_override(text)[0][0] in sweep_fields]
    base_overrides = [text for text in overrides if text not in sweep_overrides]
    spec: SweepConfig = validate_dict(SweepConfig, apply_overrides(raw, sweep_overrides), str(path))

    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        if not base_path.is_file():
            raise UserError(f"{path}: base config {spec.base} not found (looked in {base_path})")
        base_raw, base_source = read_yaml(base_path), str(base_path)
    else:
        base_raw, base_source = spec.base, f"{path} (base)"
    merged = apply_overrides(apply_values(base_raw, spec.set, f"{path}: set:"), base_overrides)
    trial = spec.trial.resolved(cluster_gpus=0) if spec.trial.gpus_per_worker == "auto" else spec.trial
    merged["scaling"] = {**merged.get("scaling", {}), **trial.model_dump()}
    merged.setdefault("train", {}).pop("name", None)  # each trial names its own run
    base: Config = validate_dict(Config, merged, base_source)

    resolved = ResolvedSweep(spec, base, str(path))
    check_search_values(resolved)
    check_metric(resolved)
    return resolved


def check_search_values(sweep: ResolvedSweep) -> None:
    """Every value a trial may get is a valid training config, checked now rather than mid-sweep:
    each grid/choice value and both bounds of each range (with the base's other values), then every
    grid point (values of several keys may clash with each other)."""
    for key, distribution in sweep.spec.search.items():
        for value in distribution.values_to_check():
            problem = sweep.trial_problem({key: value})
            if problem is None:
                continue
            if problem.startswith(f"{key}: "):
                message = f"search.{problem}"
            else:
                message = f"search.{key}={shown(value)}: {problem}"
            if not distribution.discrete and value == distribution.draw_between_bounds():
                message += " (a draw between the bounds: a key that takes integers needs {int: [low, high]})"
            raise UserError(f"{sweep.source}: {message}")
    for point in sweep.spec.grid_points():
        problem = sweep.trial_problem(point)
        if problem is not None:
            values = ", ".join(f"{key}={shown(value)}" for key, value in point.items())
            raise UserError(f"{sweep.source}: the grid point {values}: {problem}")


def check_metric(sweep: ResolvedSweep) -> None:
    """`metric` is one every trial reports: Tune fails a trial whose results lack it."""
    spec = sweep.spec
    fewest = _fewest_glimpses(spec, sweep.base)
    reported = optimisable_metrics(fewest)
    if spec.metric in reported:
        return
    glimpse = glimpse_of(spec.metric)
    if glimpse is not None and glimpse >= 1:
        raise UserError(f"{sweep.source}: metric {shown(spec.metric)}: trials with {fewest} glimpse(s) do not "
                        f"report glimpse {glimpse}'s top-1: use one of {', '.join(reported)}")
    raise UserError(f"{sweep.source}: metric {shown(spec.metric)} is not reported by these trials: use one of "
                    f"{', '.join(reported)}")


def most_glimpses(spec: SweepConfig, base: Config) -> int:
    """The most glimpses a trial of the sweep has (the per-glimpse columns of its HParams view)."""
    searched = spec.search.get("model.glimpses")
    if searched is None:
        return base.model.glimpses
    return max(int(value) for value in searched.values_to_check())


def _fewest_glimpses(spec: SweepConfig, base: Config) -> int:
    """The smallest glimpse count any trial of the sweep may have: per-glimpse metrics exist up to it
    in every trial."""
    searched = spec.search.get("model.glimpses")
    if searched is None:
        return base.model.glimpses
    return min(int(value) for value in searched.values_to_check())


def label_keys(spec: SweepConfig) -> list[str]:
    """The keys that tell one trial from another: the searched ones, and the seed when several run."""
    return list(spec.search) + (["train.seed"] if len(spec.seeds) > 1 else [])


def trial_label(params: dict[str, Any], keys: list[str]) -> str:
    """What a trial is, in a few characters: `glimpses=4,feedback=off,seed=1` (the progress lines,
    and the name of its TensorBoard run, so no '/' or spaces)."""

    def short(value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value).replace("/", "_").replace(" ", "_")

    return ",".join(f"{key.rsplit('.', 1)[-1]}={short(params.get(key))}" for key in keys)


def describe_sweep(sweep: ResolvedSweep) -> str:
    spec = sweep.spec
    points = len(spec.grid_points())
    trials = points * spec.num_samples  # optuna: num_samples per grid point (a Tune experiment each)
    lines = [
        sweep.to_yaml().rstrip(),
        f"# {trials} trials ({points} grid points x {spec.num_samples} samples), algorithm {spec.algorithm}, "
        f"scheduler {spec.scheduler.type}, each trial {spec.trial.num_workers} worker(s) x "
        f"{sweep.base.train.epochs} epochs; writes {sweep.directory}",
    ]
    return "\n".join(lines)
