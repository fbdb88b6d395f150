"""How many CPUs each Ray Train worker holds, and torch threads to match: `scaling.cpus_per_worker: auto`.

`auto` is settled here and nowhere else, on the driver, from the CPUs of the nodes the run may use:
the run's workers share a node's CPUs between them. 1 worker on a 2-core laptop gets 2 CPUs (a
1-CPU worker there trains at half speed: Ray gives it one thread); 2 workers get 1 each; 1 worker
on an 8-core node gets 8. On the worker, torch runs as many threads as the CPUs Ray gave it.

    settle_cpus(config, [{"CPU": 2.0}]).scaling.cpus_per_worker      # 1 worker: 2.0
"""

from __future__ import annotations

from collections.abc import Sequence

from rsam_dist.config import Config

AUTO = "auto"


def cpus_per_worker(workers: int, nodes: Sequence[dict[str, float]], gpus_per_worker: float = 0.0) -> int:
    """The most whole CPUs each of `workers` can hold with all of them placed at once on `nodes`
    (each a resource dict, as Ray reports it).

    GPU workers count only nodes with enough GPUs (and as many per node as its GPUs fit). Where the
    nodes cannot place them all, as many as they can place (the rest wait for nodes like these);
    with no node to place one (an autoscaling cluster before its workers joined), 1.
    """
    usable = [node for node in nodes
              if node.get("CPU", 0) >= 1 and (not gpus_per_worker or node.get("GPU", 0) >= gpus_per_worker)]

    def placed(cpus: int) -> int:
        return sum(_fits(node, cpus, gpus_per_worker) for node in usable)

    target = min(workers, placed(1))
    if not target:
        return 1
    largest = max(int(node["CPU"]) for node in usable)
    return next(cpus for cpus in range(largest, 0, -1) if placed(cpus) >= target)


def _fits(node: dict[str, float], cpus: int, gpus_per_worker: float) -> int:
    count = int(node.get("CPU", 0) // cpus)
    if gpus_per_worker:
        count = min(count, int(node.get("GPU", 0) // gpus_per_worker + 1e-9))
    return count


def settle_cpus(config: Config, nodes: Sequence[dict[str, float]]) -> Config:
    """`config` with `scaling.cpus_per_worker: auto` replaced by the CPUs its workers get on `nodes`."""
    scaling = config.scaling
    if scaling.cpus_per_worker != AUTO:
        return config
    cpus = float(cpus_per_worker(scaling.num_workers, nodes, scaling.gpus_per_worker))
    return config.model_copy(update={"scaling": scaling.model_copy(update={"cpus_per_worker": cpus})})


def worker_threads(cpus: float | str) -> int:
    """Torch threads for a worker holding `cpus` CPUs (at least one)."""
    return 1 if cpus == AUTO else max(1, int(cpus))


def describe_worker(rank: int, world_size: int, device: str, threads: int, precision: str, global_batch: int) -> str:
    """The line a run prints first: what each worker got to train with."""
    return (f"worker {rank}/{world_size}: {device}, {threads} torch thread{'s' if threads != 1 else ''}, "
            f"precision {precision}, batch {global_batch // world_size} per worker (global {global_batch})")
