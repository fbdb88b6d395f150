"""The plan's two tables, kept in the repository and read typed: instance types with their prices
(`instances.yaml`), and measured throughput and overheads (`throughput.yaml`).

Each figure carries its source and date. Nothing here fills a gap with a guess: an instance type,
price or GPU type that the tables do not hold is returned as None and the plan says "unknown".

    from rsam_dist.plan.catalog import load_instances, load_throughput
    load_instances().instance("g5.xlarge").gpu            # 'A10G'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from rsam_dist.config import Section, read_yaml, validate_dict

HERE = Path(__file__).resolve().parent
INSTANCES_FILE = HERE / "instances.yaml"
THROUGHPUT_FILE = HERE / "throughput.yaml"


class Provenance(Section):
    source: str
    as_of: str
    """When the figure was true (YYYY-MM or YYYY-MM-DD)."""
    needs_refresh: bool = False


class RegionPrice(Section):
    on_demand: float | None = Field(None, gt=0)
    """USD per hour."""
    spot: float | None = Field(None, gt=0)
    on_demand_source: Provenance | None = None
    spot_source: Provenance | None = None

    def price(self, market: Literal["on-demand", "spot"]) -> tuple[float | None, Provenance | None]:
        if market == "spot":
            return self.spot, self.spot_source
        return self.on_demand, self.on_demand_source


class Instance(Section):
    vcpus: int = Field(ge=1)
    memory_gib: float = Field(gt=0)
    gpus: int = Field(0, ge=0)
    gpu: str | None = None
    """The GPU model as Ray's accelerator_type names it (A10G, T4, L4, K520, H100 ...)."""
    gpu_memory_gib: float | None = None
    compute_capability: str | None = None
    prices: dict[str, RegionPrice] = Field(default_factory=dict)
    """By region."""


class InstanceTable(Section):
    sources: dict[str, Provenance] = Field(default_factory=dict)
    instances: dict[str, Instance]

    def instance(self, name: str | None) -> Instance | None:
        return self.instances.get(name) if name else None


class GpuThroughput(Section):
    """One measured figure: RSAM trials of this setting on one GPU of this type."""

    gpu: str
    glimpses: int
    hidden_size: int
    feedback: bool
    attention_input: str
    batch: int
    """Images per worker per step."""
    trials_per_gpu: int = Field(1, ge=1)
    """How many trials shared the GPU while it was measured (each trial's throughput is given)."""
    train_images_per_s: float = Field(gt=0)
    eval_images_per_s: float = Field(gt=0)
    source: str
    as_of: str


class ReferenceStep(Section):
    """A small step timed while the overheads were measured: timing it again at plan time says how
    much faster or slower the machine is now (its load), and the overheads are scaled by that."""

    glimpses: int
    hidden_size: int
    feedback: bool
    attention_input: str
    batch: int
    threads: int
    train_step_s: float = Field(gt=0)


class LocalOverheads(Section):
    """Fixed costs of a sweep on a machine like the one they were measured on, beyond the model step."""

    sweep_start_s: float = Field(ge=0)
    """Starting Ray and the sweep, and writing its results after the last trial."""
    trial_start_s: float = Field(ge=0)
    """A trial's start until its first epoch begins (Train controller, worker group, data) and its end."""
    epoch_extra_s: float = Field(ge=0)
    """Per epoch, beyond the training steps and the test pass (checkpoint, TensorBoard, reports)."""
    reference: ReferenceStep
    machine: str
    source: str
    as_of: str


class ThroughputTable(Section):
    gpus: list[GpuThroughput] = Field(default_factory=list)
    local_overheads: LocalOverheads | None = None

    def gpu_figure(self, gpu: str, glimpses: int, hidden_size: int, feedback: bool, attention_input: str,
                   batch: int, trials_per_gpu: int) -> GpuThroughput | None:
        """The measured figure of exactly this setting on `gpu`, or None (never a neighbour's)."""
        for row in self.gpus:
            if (normalise_gpu(row.gpu), row.glimpses, row.hidden_size, row.feedback, row.attention_input,
                    row.batch, row.trials_per_gpu) == (normalise_gpu(gpu), glimpses, hidden_size, feedback,
                                                       attention_input, batch, trials_per_gpu):
                return row
        return None

    def gpu_types(self) -> list[str]:
        return sorted({row.gpu for row in self.gpus})


def normalise_gpu(name: str) -> str:
    """'NVIDIA A10G', 'A10G' and 'a10g' are one GPU type."""
    return name.upper().removeprefix("NVIDIA ").strip()


@lru_cache(maxsize=4)
def load_instances(path: Path = INSTANCES_FILE) -> InstanceTable:
    return validate_dict(InstanceTable, read_yaml(path), str(path))


@lru_cache(maxsize=4)
def load_throughput(path: Path = THROUGHPUT_FILE) -> ThroughputTable:
    return validate_dict(ThroughputTable, read_yaml(path), str(path))
