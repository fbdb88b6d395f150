"""Where the trials would run, as the plan sees it: node types with their CPUs, GPUs and counts.

Three sources, none of which starts Ray:
- this machine (`rsam-dist sweep` starts a local Ray over all its CPUs and GPUs);
- a cluster-launcher file (`--cluster cluster/aws-gpu.yaml`): each node type at its max_workers,
  its CPUs/GPUs from `resources:` or, where Ray reads them from the instance type, from
  instances.yaml;
- a running cluster's dashboard (`--address http://127.0.0.1:8265`): its live nodes, through the
  State API over HTTP.

    from rsam_dist.plan.targets import cluster_target
    [(n.name, n.instance, n.gpus, n.max_count) for n in cluster_target("cluster/aws-gpu.yaml").nodes]
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rsam_dist.errors import UserError
from rsam_dist.plan.catalog import load_instances
from rsam_dist.ray_cluster import LOCAL_TRIAL_DRIVER_SLOTS, TRIAL_DRIVER_RESOURCE

Market = Literal["on-demand", "spot"]
_RESOURCES_FLAG = re.compile(r"--resources[= ]+'([^']*)'")


@dataclass
class NodeType:
    name: str
    is_head: bool
    max_count: int
    """How many of these nodes the cluster may have at once (1 for the head)."""
    cpus: float | None
    """None: not known from here (the local provider's machines, an instance type not in the table)."""
    gpus: float | None
    gpu: str | None = None
    """The GPU model (A10G ...), None without GPUs or when unknown."""
    compute_capability: str | None = None
    instance: str | None = None
    market: Market | None = None
    custom: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources, e.g. train_driver slots on the head."""
    min_count: int = 0

    def describe(self) -> str:
        role = "head" if self.is_head else f"{self.min_count}..{self.max_count} workers"
        cpus = "? CPUs" if self.cpus is None else f"{self.cpus:g} CPUs"
        gpus = "? GPUs" if self.gpus is None else (f"{self.gpus:g}x {self.gpu or 'GPU'}" if self.gpus else "no GPU")
        extra = "".join(f", {name} {value:g}" for name, value in self.custom.items())
        where = f"{self.instance} ({self.market}), " if self.instance else ""
        return f"{self.name}: {where}{cpus}, {gpus}{extra}; {role}"


@dataclass
class Target:
    kind: Literal["local", "cluster", "address"]
    label: str
    nodes: list[NodeType]
    region: str | None = None
    max_workers: int | None = None
    """The cluster's cap on worker nodes of all types together."""
    idle_timeout_minutes: float = 0.0
    source: str | None = None
    """The cluster file or dashboard URL."""
    rsync_exclude: list[str] = field(default_factory=list)
    """What `ray up` does not copy onto the nodes (data/ usually)."""

    @property
    def head(self) -> NodeType:
        return next(node for node in self.nodes if node.is_head)

    @property
    def max_gpus(self) -> float:
        return sum((node.gpus or 0) * node.max_count for node in self.nodes)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"


# --- this machine --------------------------------------------------------------------------------


def local_target() -> Target:
    """This machine as `rsam-dist sweep` uses it: a local Ray over all CPUs (as Ray counts them:
    the CPUs this process may run on) and GPUs, with the sweep's trial-driver slots."""
    cpus = local_cpu_count()
    gpus, gpu = _local_gpus()
    node = NodeType("this machine", True, 1, float(cpus), float(gpus), gpu=gpu,
                    custom={TRIAL_DRIVER_RESOURCE: float(LOCAL_TRIAL_DRIVER_SLOTS)}, min_count=1)
    described = f"{cpus} CPUs, " + (f"{gpus}x {gpu}" if gpus else "no GPU")
    return Target("local", f"this machine ({described})", [node])


def local_cpu_count() -> int:
    """The CPUs this process may run on (what a local Ray counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _local_gpus() -> tuple[int, str | None]:
    import torch

    count = torch.cuda.device_count()  # asks the driver; no CUDA context is made
    if not count:
        return 0, None
    return count, torch.cuda.get_device_name(0)


# --- a cluster-launcher file -----------------------------------------------------------------------


def cluster_target(path: str | Path) -> Target:
    """The cluster a launcher file describes, at its largest (every node type at max_workers)."""
    from rsam_dist.jobs.cluster_file import validate_cluster_file

    config = validate_cluster_file(path)  # Ray's schema and our rules, or a one-line UserError
    provider = config["provider"]
    table = load_instances()
    head_name = config["head_node_type"]
    nodes = []
    for name, node_type in config["available_node_types"].items():
        is_head = name == head_name
        resources: dict[str, Any] = dict(node_type.get("resources") or {})
        node_config = node_type.get("node_config") or {}
        instance_name = node_config.get("InstanceType") or node_config.get("machineType")
        instance = table.instance(instance_name)
        if is_head and provider["type"] == "local":
            resources = {**_flag_resources(config.get("head_start_ray_commands") or []), **resources}
        cpus = resources.pop("CPU", None)
        gpus = resources.pop("GPU", None)
        if instance is not None:
            cpus = instance.vcpus if cpus is None else cpus
            gpus = instance.gpus if gpus is None else gpus
        market: Market | None = None
        if instance_name:
            spot = (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
            market = "spot" if spot else "on-demand"
        count = 1 if is_head else int(node_type.get("max_workers", 0))
        if provider["type"] == "local" and not is_head:
            count = int(node_type.get("max_workers", 0))
        nodes.append(NodeType(
            name=name, is_head=is_head, max_count=count,
            cpus=None if cpus is None else float(cpus), gpus=None if gpus is None else float(gpus),
            gpu=instance.gpu if instance is not None and gpus else None,
            compute_capability=instance.compute_capability if instance is not None and gpus else None,
            instance=instance_name, market=market, custom={k: float(v) for k, v in resources.items()},
            min_count=1 if is_head else int(node_type.get("min_workers", 0)),
        ))
    if provider["type"] == "local":
        # The local provider's one node type is the head and the workers alike: the head is one of
        # the machines, the workers up to max_workers more.
        head = nodes[0]
        head.is_head, head.max_count, head.min_count = True, 1, 1
        nodes.append(NodeType("worker machines", False, int(config.get("max_workers", 0)), None, None))
    where = provider.get("region") or provider.get("head_ip") or ""
    label = f"cluster {config.get('cluster_name')} ({provider['type']}{' ' + where if where else ''}, {path})"
    return Target("cluster", label, nodes, region=provider.get("region"), max_workers=config.get("max_workers"),
                  idle_timeout_minutes=float(config.get("idle_timeout_minutes", 0)), source=str(path),
                  rsync_exclude=list(config.get("rsync_exclude") or []))


def _flag_resources(commands: list[str]) -> dict[str, Any]:
    """The custom resources a `ray start --head --resources='{...}'` command gives."""
    for command in commands:
        if "ray start" in command and "--head" in command and (match := _RESOURCES_FLAG.search(command)):
            try:
                return dict(json.loads(match[1]))
            except ValueError:
                return {}
    return {}


# --- a running cluster's dashboard -------------------------------------------------------------------


def address_target(url: str) -> Target:
    """The live nodes of the cluster whose dashboard is at `url` (State API over HTTP; no ray.init)."""
    from rsam_dist.jobs.dashboard import normalise_address, one_line, quiet_ray_logs
    from rsam_dist.ray_cluster import set_ray_environment

    address = normalise_address(url)
    set_ray_environment()  # token auth for `ray start` clusters, before ray is imported
    from ray.util.state import list_nodes

    try:
        with quiet_ray_logs(swallow_output=True):
            live = list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True, timeout=15,
                              raise_on_missing_output=False)
    except Exception as err:  # noqa: BLE001 - connection, auth and HTTP errors all mean "cannot plan here"
        raise UserError(f"cannot read the nodes of the cluster at {address} (its dashboard URL, e.g. "
                        f"http://127.0.0.1:8265): {one_line(err, 160)}") from None
    nodes = []
    for number, node in enumerate(live):
        resources = dict(node.resources_total or {})
        gpu = next((key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")), None)
        custom = {key: float(value) for key, value in resources.items()
                  if key == TRIAL_DRIVER_RESOURCE}
        nodes.append(NodeType(
            name=f"node {number + 1} ({node.node_ip})", is_head=bool(node.is_head_node), max_count=1,
            cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
            gpu=gpu if resources.get("GPU") else None, custom=custom, min_count=1,
        ))
    if not nodes:
        raise UserError(f"the cluster at {address} lists no live node")
    if not any(node.is_head for node in nodes):
        nodes[0].is_head = True
    return Target("address", f"the running cluster at {address} ({len(nodes)} live nodes)", nodes,
                  source=address, max_workers=len(nodes) - 1)
