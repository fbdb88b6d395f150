"""`scaling.cpus_per_worker: auto`: how a node's CPUs are shared among a run's workers, and that a
Ray Train worker then runs that many torch threads."""

from __future__ import annotations

import os

import pytest

from rsam_dist import timeline
from rsam_dist.config import load_config
from rsam_dist.errors import UserError
from rsam_dist.ray_train import train_on_ray
from rsam_dist.runs import RunDir
from rsam_dist.worker_cpus import cpus_per_worker, describe_worker, settle_cpus, worker_threads


def node(cpus: float, gpus: float = 0.0) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus}


@pytest.mark.parametrize(
    ("workers", "nodes", "gpus", "expected"),
    [
        (1, [node(2)], 0, 2),  # one worker on a 2-core laptop takes both cores
        (2, [node(2)], 0, 1),
        (3, [node(2)], 0, 1),  # more workers than CPUs: 1 each, the resource check says the rest
        (4, [node(8), node(8)], 0, 4),  # two per node
        (3, [node(8), node(4)], 0, 4),  # 2 on the big node, 1 on the small one
        (4, [node(16, 1)], 0.25, 4),  # 4 workers packed on one GPU share its node's CPUs
        (1, [node(64), node(8, 1)], 1, 8),  # a GPU worker counts only GPU nodes' CPUs
        (2, [node(8, 1)], 1, 8),  # the second GPU worker waits for a node: 1 fits with all 8
        (1, [node(0)], 0, 1),  # an autoscaling cluster's head before its workers joined
        (1, [], 0, 1),
    ],
)
def test_cpus_per_worker(workers, nodes, gpus, expected):
    assert cpus_per_worker(workers, nodes, gpus) == expected


def test_auto_is_the_default_and_a_number_is_kept():
    config = load_config()
    assert config.scaling.cpus_per_worker == "auto"
    assert settle_cpus(config, [node(2)]).scaling.cpus_per_worker == 2.0
    two = load_config(None, ["scaling.num_workers=2"])
    assert settle_cpus(two, [node(2)]).scaling.cpus_per_worker == 1.0
    fixed = load_config(None, ["scaling.cpus_per_worker=1.5"])
    assert settle_cpus(fixed, [node(8)]).scaling.cpus_per_worker == 1.5
    for bad in ("0", "many"):
        with pytest.raises(UserError, match="cpus_per_worker"):
            load_config(None, [f"scaling.cpus_per_worker={bad}"])


def test_threads_and_the_first_line():
    assert [worker_threads(cpus) for cpus in (0.5, 1.0, 2.0, 8.0)] == [1, 1, 2, 8]
    assert describe_worker(1, 2, "cpu", 1, "fp32 (auto)", 128) == (
        "worker 1/2: cpu, 1 torch thread, precision fp32 (auto), batch 64 per worker (global 128)")


@pytest.mark.slow
@pytest.mark.ray
def test_one_worker_on_a_local_ray_gets_every_cpu(tmp_path, monkeypatch):
    marks = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(timeline.ENV, str(marks))  # before Ray starts: its workers inherit it
    config = load_config(None, ["data.name=synthetic", "data.synthetic_train_size=64", "data.synthetic_test_size=32",
                                "optim.batch_size=32", "model.glimpses=1", "train.epochs=1", "train.mask_images=0",
                                f"train.storage={tmp_path}", "train.name=auto"])
    train_on_ray(RunDir.for_config(config), config)
    ready = [mark for mark in timeline.read(marks) if mark["event"] == "worker_ready"]
    assert [mark["threads"] for mark in ready] == [os.cpu_count()]
    assert ready[0]["precision"].endswith("(auto)")
    events = {mark["event"] for mark in timeline.read(marks)}
    assert {"config_ready", "ray_ready", "worker_start", "model_ready", "data_ready", "loop_start",
            "epoch_done"} - events == {"config_ready"}  # config_ready is the CLI's, not called here
    assert (tmp_path / "auto" / "config.yaml").read_text().count("cpus_per_worker: auto") == 1
