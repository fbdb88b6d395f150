"""What a run asks of Ray against what the cluster has (rsam_dist.resources), without Ray.

The checks against a real local Ray and a `ray start` cluster are rows of the fault matrix
(tests/faults/hangs.py); here: the placement arithmetic and the wait for nodes, on node lists.
"""

from __future__ import annotations

import pytest

from rsam_dist import resources
from rsam_dist.config import ScalingConfig
from rsam_dist.errors import UserError
from rsam_dist.resources import ResourceRequest

TWO_SMALL_NODES = [{"CPU": 2.0}, {"CPU": 2.0}]


def request(workers: int, strategy: str = "PACK", **per_worker: float) -> ResourceRequest:
    return ResourceRequest(workers, per_worker or {"CPU": 1.0}, strategy)


@pytest.mark.parametrize(("need", "nodes", "why"), [
    (request(4), TWO_SMALL_NODES, None),
    (request(5), TWO_SMALL_NODES, "holds only 4 such workers at once"),
    (request(3, "STRICT_PACK"), TWO_SMALL_NODES, "holds only 2 such workers on one node (STRICT_PACK)"),
    (request(2, "STRICT_SPREAD"), TWO_SMALL_NODES, None),
    (request(3, "STRICT_SPREAD"), TWO_SMALL_NODES, "holds only 2 such workers on separate nodes (STRICT_SPREAD)"),
    (request(1, CPU=3.0), TWO_SMALL_NODES, "has no node big enough for one worker"),
    (request(1, CPU=1.0, GPU=1.0), TWO_SMALL_NODES, "has no GPU"),
    (request(4, CPU=1.0, GPU=0.25), [{"CPU": 4.0, "GPU": 1.0}], None),  # four trials share one GPU
    (request(5, CPU=1.0, GPU=0.25), [{"CPU": 8.0, "GPU": 1.0}], "holds only 4 such workers at once"),
])
def test_shortfall(need: ResourceRequest, nodes: list[dict[str, float]], why: str | None) -> None:
    assert need.shortfall(nodes) == why


def test_the_error_names_what_was_asked_what_exists_and_the_keys() -> None:
    need = ResourceRequest.for_scaling(ScalingConfig(num_workers=4, cpus_per_worker=1), keys="trial", what="each trial")
    message = str(need.error([{"CPU": 2.0}], need.shortfall([{"CPU": 2.0}])))
    assert "each trial asks for 4 workers of 1 CPU" in message
    assert "(1 node: 2 CPU, 0 GPU)" in message and "trial.num_workers" in message


def test_a_fixed_cluster_is_refused_at_once(monkeypatch) -> None:
    monkeypatch.setattr(resources, "live_node_resources", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(resources, "autoscaling_node_types", lambda: None)
    with pytest.raises(UserError, match="holds only 2 such workers"):
        request(4).ensure_available()


def test_more_than_the_autoscaler_may_ever_add_is_refused_at_once(monkeypatch) -> None:
    monkeypatch.setattr(resources, "live_node_resources", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(resources, "autoscaling_node_types", lambda: [{"CPU": 4.0}])
    with pytest.raises(UserError, match="not even with every node the autoscaler may add"):
        request(1, CPU=1.0, GPU=1.0).ensure_available()


def test_nodes_that_come_while_waiting_let_the_run_start(monkeypatch, capsys) -> None:
    listings = iter([[{"CPU": 2.0}], [{"CPU": 2.0}], [{"CPU": 2.0}, {"CPU": 2.0}]])
    monkeypatch.setattr(resources, "live_node_resources", lambda: next(listings))
    monkeypatch.setattr(resources, "autoscaling_node_types", lambda: None)
    monkeypatch.setattr(resources, "POLL_S", 0.01)
    ResourceRequest(4, {"CPU": 1.0}, wait_for_nodes_s=30).ensure_available()
    assert "waiting for nodes" in capsys.readouterr().err


def test_the_wait_for_nodes_ends(monkeypatch) -> None:
    monkeypatch.setattr(resources, "live_node_resources", lambda: [{"CPU": 2.0}])
    monkeypatch.setattr(resources, "autoscaling_node_types", lambda: None)
    monkeypatch.setattr(resources, "POLL_S", 0.01)
    with pytest.raises(UserError, match=r"after waiting 0\.2 s"):
        ResourceRequest(4, {"CPU": 1.0}, wait_for_nodes_s=0.2).ensure_available(quiet=True)


def test_this_machine_as_a_local_ray_would_see_it() -> None:
    node = resources.local_node_resources(num_cpus=2)
    assert node is not None and node["CPU"] == 2
    with pytest.raises(UserError, match="a local Ray on this machine"):
        request(3).check_local_ray(num_cpus=2)
