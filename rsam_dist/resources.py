"""What a run asks of Ray (its workers' CPUs and GPUs) against what the cluster has or may get.

Ray Train never says no: a worker group that cannot be placed is retried every 60 s for ever.
So `train` and `sweep` check first, and a request no node set can hold is a UserError naming
what was asked and what exists. For a local Ray the check runs before Ray starts (Ray's own
detection of this machine's CPUs and GPUs); for a cluster, right after connecting. A cluster
whose autoscaler may still add nodes (or any cluster, with `scaling.wait_for_nodes_s` set) is
waited for, up to that many seconds, printing what it waits for.

    need = ResourceRequest.for_scaling(config.scaling)
    need.check_local_ray()          # before ray.init(address="local")
    need.ensure_available()         # after ray.init, before fit
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from rsam_dist.config import AUTOSCALING_WAIT_S
from rsam_dist.errors import UserError

POLL_S = 5.0
"""How often a wait for nodes looks at the cluster again."""
REPORT_EVERY_S = 60.0
"""How often a wait for nodes says it is still waiting."""
SCHEDULED = ("CPU", "GPU")
"""The resources a worker asks for by name; others (memory, node:...) never limit a run here."""


@dataclass(frozen=True)
class ResourceRequest:
    """`workers` identical bundles `per_worker`, placed with Ray's `strategy`."""

    workers: int
    per_worker: dict[str, float]
    strategy: str = "PACK"
    keys: str = "scaling"
    """Config section to name in hints: `scaling` for train, `trial` for a sweep's trials."""
    what: str = "the run"
    wait_for_nodes_s: float | None = None
    """scaling.wait_for_nodes_s: None picks AUTOSCALING_WAIT_S or 0, depending on the cluster."""

    @classmethod
    def for_scaling(cls, scaling: Any, keys: str = "scaling", what: str = "the run",
                    wait_for_nodes_s: float | None = None) -> ResourceRequest:
        """The request of a Train run shaped by `scaling` (a ScalingConfig or a sweep's TrialResources)."""
        per_worker = {"CPU": float(scaling.cpus_per_worker)}
        if scaling.gpus_per_worker:
            per_worker["GPU"] = float(scaling.gpus_per_worker)
        wait = getattr(scaling, "wait_for_nodes_s", None) if wait_for_nodes_s is None else wait_for_nodes_s
        return cls(scaling.num_workers, per_worker, getattr(scaling, "placement_strategy", "PACK"), keys, what,
                   wait)

    def describe(self) -> str:
        each = ", ".join(f"{_amount(v)} {k}" for k, v in self.per_worker.items())
        plural = "s" if self.workers > 1 else ""
        return f"{self.workers} worker{plural} of {each}"

    # --- the checks -------------------------------------------------------------------------------

    def shortfall(self, nodes: list[dict[str, float]]) -> str | None:
        """Why `nodes` (each a resource dict) can never hold this request at once; None if they can."""
        for name, amount in self.per_worker.items():
            if amount > 0 and not any(node.get(name, 0) for node in nodes):
                return f"has no {name}"
        per_node = [self._bundles_on(node) for node in nodes]
        if self.strategy == "STRICT_PACK":
            fits, rule = max(per_node, default=0), "on one node (STRICT_PACK)"
        elif self.strategy == "STRICT_SPREAD":
            fits, rule = sum(1 for count in per_node if count), "on separate nodes (STRICT_SPREAD)"
        else:
            fits, rule = sum(per_node), "at once"
        if fits >= self.workers:
            return None
        if not any(per_node):
            return "has no node big enough for one worker"
        return f"holds only {fits} such worker{'s' if fits != 1 else ''} {rule}"

    def _bundles_on(self, node: dict[str, float]) -> int:
        counts = [math.floor(node.get(name, 0) / amount + 1e-9) for name, amount in self.per_worker.items() if amount]
        return min(counts, default=0)

    def error(self, nodes: list[dict[str, float]], why: str, after: str = "",
              where: str = "this Ray cluster") -> UserError:
        gpu_missing = "GPU" in self.per_worker and why == "has no GPU"
        hint = (f"set {self.keys}.gpus_per_worker=0, or use a cluster with GPUs" if gpu_missing else
                f"lower {self.keys}.num_workers or {self.keys}.cpus_per_worker/gpus_per_worker, or use a bigger "
                "cluster")
        return UserError(f"{self.what} asks for {self.describe()} but {where} ({describe_nodes(nodes)}) "
                         f"{why}{after}; {hint}")

    def check_local_ray(self, num_cpus: int | None = None) -> None:
        """Refuse, before starting a local Ray, a request that the Ray this machine would get cannot hold."""
        node = local_node_resources(num_cpus)
        if node is None:
            return  # Ray's detection failed here; the check after ray.init still runs
        why = self.shortfall([node])
        if why:
            raise self.error([node], why, where="a local Ray on this machine")

    def ensure_available(self, quiet: bool = False) -> None:
        """Return when the connected cluster can hold this request; wait for nodes where they may
        come; else a UserError naming what was asked and what exists."""
        nodes = live_node_resources()
        why = self.shortfall(nodes)
        if why is None:
            return
        growth = autoscaling_node_types()
        wait = self.wait_for_nodes_s
        if wait is None:
            wait = AUTOSCALING_WAIT_S if growth is not None else 0.0
        if growth:  # the autoscaler's limits (known under autoscaler v2): what the cluster could ever hold
            largest = nodes + [node for node in growth for _ in range(self.workers)]
            if self.shortfall(largest) is not None:
                raise self.error(nodes, why, " (not even with every node the autoscaler may add)")
        if wait <= 0:
            raise self.error(nodes, why)
        self._wait_for_nodes(wait, growth is not None, quiet)

    def _wait_for_nodes(self, wait_s: float, autoscaling: bool, quiet: bool) -> None:
        if autoscaling:  # ask now: the autoscaler only sees Train's own request once fit() starts
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[dict(self.per_worker)] * self.workers)
        started = time.monotonic()
        said = -math.inf
        try:
            while True:
                nodes = live_node_resources()
                why = self.shortfall(nodes)
                if why is None:
                    return
                waited = time.monotonic() - started
                if waited >= wait_s:
                    raise self.error(nodes, why, f" after waiting {wait_s:g} s for nodes (scaling.wait_for_nodes_s)")
                if not quiet and waited - said >= REPORT_EVERY_S:
                    said = waited
                    print(f"rsam-dist: waiting for nodes ({wait_s - waited:.0f} s left, scaling.wait_for_nodes_s): "
                          f"{self.what} needs {self.describe()}; the cluster has {describe_nodes(nodes)}",
                          file=sys.stderr, flush=True)
                time.sleep(min(POLL_S, max(0.1, wait_s - waited)))
        finally:
            if autoscaling:  # the request stays until replaced: leave the cluster free to scale down
                from ray.autoscaler.sdk import request_resources

                request_resources(bundles=[])


# --- what the cluster has -------------------------------------------------------------------------


def live_node_resources() -> list[dict[str, float]]:
    """Each alive node's total resources (the connected cluster's)."""
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def local_node_resources(num_cpus: int | None = None) -> dict[str, float] | None:
    """The resources a local `ray.init(num_cpus=...)` would give this machine, by Ray's own rules
    (cgroup CPU limits, CUDA_VISIBLE_DEVICES); None if that detection fails."""
    from rsam_dist.ray_cluster import set_ray_environment

    set_ray_environment()
    try:
        from ray._private.resource_and_label_spec import ResourceAndLabelSpec

        spec = ResourceAndLabelSpec(num_cpus=num_cpus, resources={}).resolve(is_head=True)
        return {name: float(value) for name, value in spec.to_resource_dict().items()}
    except Exception:  # noqa: BLE001 - a private Ray API: any failure only skips the early check
        return None


def autoscaling_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type the cluster's autoscaler may still add; [] when an
    autoscaler runs but does not publish its node types (autoscaler v1, Ray's default for
    `ray up`); None when the cluster has no autoscaler (a local Ray, `ray start` by hand)."""
    try:
        import ray._private.state

        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API (Ray Data uses it the same way)
        config = None
    if config:
        types = [
            {name: float(value) for name, value in group.resources.items()}
            for group in config.node_group_configs
            if group.resources and group.max_count != 0 and (group.max_count == -1 or group.max_count > group.min_count)
        ]
        return types or None
    return [] if _legacy_autoscaler_reports() else None


LEGACY_STATUS_FRESH_S = 120.0
"""An autoscaler v1 status older than this is a dead monitor's, not a running autoscaler's."""


def _legacy_autoscaler_reports() -> bool:
    """Whether an autoscaler v1 monitor is reporting: it writes its status (the one `ray status`
    shows) into the GCS key-value store every few seconds, with an `autoscaler_report` section."""
    import json

    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        status = json.loads(raw) if raw else {}
    except Exception:  # noqa: BLE001 - a private Ray API: without it, no wait is offered
        return False
    fresh = time.time() - float(status.get("time", 0)) < LEGACY_STATUS_FRESH_S
    return bool(status.get("autoscaler_report")) and fresh


def describe_nodes(nodes: list[dict[str, float]]) -> str:
    """'1 node: 2 CPU, 0 GPU' or '3 nodes: 10 CPU, 2 GPU in all, at most 4 CPU, 1 GPU on one'."""
    totals = {name: sum(node.get(name, 0) for node in nodes) for name in SCHEDULED}
    text = ", ".join(f"{_amount(totals[name])} {name}" for name in SCHEDULED)
    if len(nodes) <= 1:
        return f"{len(nodes)} node: {text}"
    largest = {name: max(node.get(name, 0) for node in nodes) for name in SCHEDULED}
    biggest = ", ".join(f"{_amount(largest[name])} {name}" for name in SCHEDULED)
    return f"{len(nodes)} nodes: {text} in all, at most {biggest} on one"


def _amount(value: float) -> str:
    return f"{value:g}"
