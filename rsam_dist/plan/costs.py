"""Node-hours and what they cost, from instances.yaml's prices (each with its source and date).

Nodes are counted as the autoscaler keeps them: the head for the whole sweep, each worker the
sweep needs from the start to the end plus `idle_timeout_minutes` before it is removed. Node
start-up and setup (minutes per node) are not included: nothing here has measured them.

    from rsam_dist.plan.costs import cluster_cost
    cost = cluster_cost(target, {"head": 1, "gpu_worker": 1}, wall_hours=2.0)
    cost.total, cost.rate_per_hour
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rsam_dist.plan.catalog import Provenance, load_instances
from rsam_dist.plan.targets import NodeType, Target


@dataclass
class NodeCost:
    node: NodeType
    count: int
    hours: float | None
    """Node-hours of all `count` nodes; None while the wall time is unknown."""
    rate: float | None
    """USD per node-hour at the node's market (spot or on-demand); None: no price in the table."""
    on_demand_rate: float | None
    provenance: list[Provenance] = field(default_factory=list)

    @property
    def cost(self) -> float | None:
        return None if self.hours is None or self.rate is None else self.hours * self.rate

    @property
    def on_demand_cost(self) -> float | None:
        return None if self.hours is None or self.on_demand_rate is None else self.hours * self.on_demand_rate


@dataclass
class CostEstimate:
    nodes: list[NodeCost]

    @property
    def node_hours(self) -> float | None:
        hours = [item.hours for item in self.nodes]
        return None if any(h is None for h in hours) else sum(hours)

    @property
    def total(self) -> float | None:
        costs = [item.cost for item in self.nodes]
        return None if any(c is None for c in costs) else sum(costs)

    @property
    def total_on_demand(self) -> float | None:
        costs = [item.on_demand_cost for item in self.nodes]
        return None if any(c is None for c in costs) else sum(costs)

    @property
    def rate_per_hour(self) -> float | None:
        """USD per hour while all these nodes are up, at their markets."""
        rates = [item.rate for item in self.nodes]
        return None if any(r is None for r in rates) else sum(r * item.count for r, item in zip(rates, self.nodes,
                                                                                           strict=True))

    @property
    def unpriced(self) -> list[str]:
        return [f"{item.node.instance or item.node.name} ({item.node.market or 'unknown market'})"
                for item in self.nodes if item.rate is None]

    @property
    def provenance(self) -> list[Provenance]:
        seen: dict[str, Provenance] = {}
        for item in self.nodes:
            for source in item.provenance:
                seen.setdefault(source.source, source)
        return list(seen.values())


def cluster_cost(target: Target, nodes_used: dict[str, int], wall_hours: float | None) -> CostEstimate:
    """What the nodes `nodes_used` (node type -> count) cost over a sweep of `wall_hours`."""
    table = load_instances()
    idle_hours = target.idle_timeout_minutes / 60
    items = []
    for node in target.nodes:
        count = nodes_used.get(node.name, 0)
        if not count:
            continue
        kept = node.is_head or count <= node.min_count  # min_workers nodes stay up like the head
        hours = None if wall_hours is None else count * (wall_hours + (0 if kept else idle_hours))
        instance = table.instance(node.instance)
        prices = instance.prices.get(target.region or "") if instance is not None else None
        rate = on_demand = None
        provenance: list[Provenance] = []
        if prices is not None:
            rate, source = prices.price(node.market or "on-demand")
            on_demand, demand_source = prices.price("on-demand")
            provenance = [s for s in (source, demand_source) if s is not None]
        items.append(NodeCost(node, count, hours, rate, on_demand, provenance))
    return CostEstimate(items)
