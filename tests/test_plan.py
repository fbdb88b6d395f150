"""`rsam-dist plan`: trials, capacity, time, GPU-hours and cost without Ray, and each pre-flight refusal
(one line, exit 2). Cluster plans read the shipped cluster files; local plans time the real step
of a small model here (a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.errors import UserError
from rsam_dist.plan import make_plan
from rsam_dist.plan.catalog import GpuThroughput, ThroughputTable, load_instances
from rsam_dist.plan.estimate import asha_expected_epochs, makespan
from rsam_dist.plan.record import estimated_seconds
from rsam_dist.plan.targets import local_cpu_count

FAST_MODEL = ("model.hidden_size=64", "optim.batch_size=32")
"""Overrides that keep a local plan's step timing to a few seconds on a loaded 2-core machine."""


def refusal(args: list[str]) -> str:
    """The one line `rsam-dist ARGS` fails with (exit 2)."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("rsam-dist: error: ")
    return result.output


# --- arithmetic, by hand ---------------------------------------------------------------------------


def test_asha_expected_epochs_by_hand():
    # rungs 2, 4, 8, 16 below 20: all trials run 2 epochs, half run 2 more, a quarter 4 more,
    # an eighth 8 more, a sixteenth the last 4: 2 + 1 + 1 + 1 + 0.25
    assert asha_expected_epochs(20, 2, 2) == pytest.approx(5.25)
    assert asha_expected_epochs(6, 10, 2) == 6  # the first rung is past the end: FIFO


def test_makespan_lays_trials_out_in_order_over_the_slots():
    assert makespan([3, 3, 2, 2], 2) == 5
    assert makespan([5, 1, 1, 1, 1], 2) == 5
    assert makespan([2, 2, 2], 8) == 2


def test_estimate_is_matched_to_a_trial_by_its_values():
    record = {"trials": [{"match": {"model.glimpses": 1, "train.seed": 0}, "seconds": 10.0, "expected_seconds": 8.0},
                         {"match": {"model.glimpses": 2, "train.seed": 0}, "seconds": 20.0, "expected_seconds": 20.0}]}
    assert estimated_seconds(record, {"model.glimpses": 2, "train.seed": 0, "optim.lr": 0.1}) == 20.0
    assert estimated_seconds(record, {"model.glimpses": 1, "train.seed": 0}) == 8.0
    assert estimated_seconds(record, {"model.glimpses": 3, "train.seed": 0}) is None
    assert estimated_seconds(None, {"train.seed": 0}) is None


# --- cluster plans: no Ray ---------------------------------------------------------------------------


def test_glimpses_on_aws_gpu_in_under_a_minute_without_ray(repo_root):
    started = time.monotonic()
    result = subprocess.run([str(Path(sys.executable).with_name("rsam-dist")), "plan", "sweeps/glimpses.yaml",
                             "--cluster", "cluster/aws-gpu.yaml"], cwd=repo_root, capture_output=True, text=True,
                            timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 60, f"plan took {elapsed:.0f} s"
    text = result.stdout
    assert "Trials: 8 = 8 grid point(s) x 1 sample(s)" in text
    for glimpses in range(1, 9):
        assert f"\n  {glimpses}  {glimpses}  " in text  # a row per trial: number, glimpses, seed ...
    assert "1 worker(s) x (1 CPU, 0.25 GPU)  4" in text  # four trials share a GPU
    assert "At once: 4 trial(s), limited by the head's 4 train_driver slots" in text
    assert "GPU-hours: unknown" in text and "no measured A10G figure" in text  # never guessed
    assert "$0.78 per hour" in text  # m5.2xlarge on-demand 0.384 + g5.xlarge spot 0.40
    assert "NEEDS A REFRESH" in text
    assert text.rstrip().splitlines()[-1].startswith("plan: 8 trial(s), 4 at a time on cluster rsam-gpu")


def descendants() -> list[str]:
    """The command names of this process's children, grandchildren ... (from /proc)."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append((int(stat.parent.name), name))
    found, todo = [], [os.getpid()]
    while todo:
        for pid, name in parents.get(todo.pop(), []):
            found.append(name)
            todo.append(pid)
    return found


def test_cluster_plan_starts_no_ray(repo_root):
    import ray

    plan = make_plan(repo_root / "sweeps/glimpses.yaml", cluster=str(repo_root / "cluster/aws-gpu.yaml"))
    assert len(plan.trials) == 8 and plan.capacity.at_once == 4
    assert not ray.is_initialized()
    started = descendants()
    assert not [name for name in started if "raylet" in name or "gcs_server" in name], started


def test_time_gpu_hours_and_cost_from_a_measured_gpu_figure(repo_root):
    # A test figure (not a measurement): 1,000 training and 5,000 test images/s on one A10G.
    row = GpuThroughput(gpu="NVIDIA A10G", glimpses=4, hidden_size=256, feedback=True, attention_input="downsample",
                        batch=128, trials_per_gpu=1, train_images_per_s=1000, eval_images_per_s=5000,
                        source="test figure", as_of="2026-01-01")
    plan = make_plan(repo_root / "configs/cifar10.yaml", ["scaling.gpus_per_worker=1", "train.epochs=1"],
                     cluster=str(repo_root / "cluster/aws-gpu.yaml"), table=ThroughputTable(gpus=[row]))
    # one epoch: 390 batches of 128 = 49,920 images / 1,000 + 10,000 test images / 5,000 = 51.92 s
    [estimate] = plan.estimates
    assert estimate.seconds == pytest.approx(51.92)
    assert plan.wall_seconds == pytest.approx(51.92)
    assert plan.gpu_hours == pytest.approx(51.92 / 3600)
    assert plan.capacity.nodes_used == {"head": 1, "gpu_worker": 1}
    # head m5.2xlarge on-demand $0.384 for the run; the g5.xlarge spot $0.40 for the run plus its
    # 5 idle minutes: 0.0144222 h x 0.384 + 0.0977556 h x 0.40 = 0.005538 + 0.039102
    assert plan.cost.total == pytest.approx(0.044640, abs=1e-6)
    # all on-demand: 0.005538 + 0.0977556 x 1.006 = 0.103880
    assert plan.cost.total_on_demand == pytest.approx(0.103880, abs=1e-6)
    assert "$0.04 at the file's markets ($0.10 all on-demand)" in plan.text()


def test_multi_gpu_cluster_and_max_concurrent_trials(repo_root):
    plan = make_plan(repo_root / "sweeps/replicate.yaml", ["max_concurrent_trials=2"],
                     cluster=str(repo_root / "cluster/aws-multi-gpu.yaml"))
    assert len(plan.trials) == 5 and [t.seed for t in plan.trials] == [0, 1, 2, 3, 4]
    assert plan.capacity.at_once == 2 and plan.capacity.limit == "max_concurrent_trials 2"
    assert plan.capacity.room == 32  # 2 nodes x 4 A10G x 4 trials per GPU
    assert plan.capacity.nodes_used == {"head": 1, "gpu4_worker": 1}


def test_every_instance_type_in_the_cluster_files_has_a_dated_price(repo_root):
    table = load_instances()
    for path in sorted((repo_root / "cluster").glob("aws-*.yaml")):
        raw = yaml.safe_load(path.read_text())
        region = raw["provider"]["region"]
        for node in raw["available_node_types"].values():
            instance = table.instance(node["node_config"]["InstanceType"])
            assert instance is not None, path
            price = instance.prices[region]
            assert price.on_demand and price.on_demand_source.as_of and price.on_demand_source.needs_refresh


# --- local plans: the step timed here ------------------------------------------------------------------


def test_local_plan_times_the_step_and_interpolates_glimpses(repo_root, tmp_path):
    # Storage in the test's folder: a `make demo` run left in the checkout must not refuse the plan.
    plan = make_plan(repo_root / "sweeps/demo.yaml", [*FAST_MODEL, f"storage={tmp_path}"], budget_s=0.1)
    assert len(plan.trials) == 6
    assert plan.capacity.at_once == min(local_cpu_count(), 6)
    assert all(estimate.seconds > 0 for estimate in plan.estimates)
    by_glimpses = {(e.trial.fixed["model.glimpses"], e.trial.fixed["model.feedback"]): e for e in plan.estimates}
    assert by_glimpses[(2, True)].basis.startswith("interpolated between 1 and 4 glimpses")
    assert by_glimpses[(1, True)].basis == by_glimpses[(4, False)].basis == "measured here"
    assert plan.wall_seconds >= max(e.seconds for e in plan.estimates)
    assert plan.dataset.train == 1437 and plan.dataset.test == 360  # digits' own split
    assert plan.cost is None and plan.gpu_hours == 0


def test_sweep_dry_run_is_plan(repo_root, tmp_path):
    args = ["--set", FAST_MODEL[0], "--set", FAST_MODEL[1], "--set", f"storage={tmp_path}"]
    result = CliRunner().invoke(main, ["sweep", str(repo_root / "sweeps/demo.yaml"), "--dry-run", *args])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Plan for {repo_root / 'sweeps/demo.yaml'} (sweep) on this machine")
    assert "plan: 6 trial(s)" in result.output
    assert not (tmp_path / "demo").exists()  # nothing written, nothing run


# --- refusals: one line, exit 2, before anything is spent -------------------------------------------


def test_refuses_a_trial_that_fits_no_node(repo_root):
    line = refusal(["plan", str(repo_root / "sweeps/glimpses.yaml"), "--cluster",
                    str(repo_root / "cluster/aws-gpu.yaml"), "--set", "trial.cpus_per_worker=16"])
    assert "a trial worker needs 16 CPUs and 0.25 GPUs" in line
    line = refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--set", "trial.num_workers=64"])
    assert "a trial needs 64 workers" in line
    line = refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--set", "trial.gpus_per_worker=1"])
    assert "has no GPU" in line


def test_g2_plans_cpu_trials_and_refuses_a_gpu(repo_root):
    """cluster/aws-g2.yaml offers Ray no GPU (its K520 cannot run current PyTorch): trials are
    planned on CPUs, and a trial that asks for a GPU is refused before anything is spent."""
    result = CliRunner().invoke(main, ["plan", str(repo_root / "sweeps/glimpses.yaml"), "--cluster",
                                       str(repo_root / "cluster/aws-g2.yaml")])
    assert result.exit_code == 0, result.output
    assert "1 worker(s) x (1 CPU, no GPU)" in result.output
    line = refusal(["plan", str(repo_root / "sweeps/glimpses.yaml"), "--cluster",
                    str(repo_root / "cluster/aws-g2.yaml"), "--set", "trial.gpus_per_worker=1"])
    assert "has no GPU" in line


def test_refuses_an_invalid_cluster_file(repo_root, tmp_path):
    raw = yaml.safe_load((repo_root / "cluster/aws-gpu.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "max_wokers": 3}))
    assert "Ray's cluster schema" in refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--cluster", str(bad)])
    raw["available_node_types"]["head"]["resources"] = {"GPU": 0}  # valid, but no trial-driver slots
    no_drivers = tmp_path / "no-drivers.yaml"
    no_drivers.write_text(yaml.safe_dump(raw))
    line = refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--cluster", str(no_drivers)])
    assert "'train_driver' resource" in line
    assert "is a cluster file" in refusal(["plan", str(repo_root / "cluster/aws-gpu.yaml")])


def test_refuses_data_smaller_than_a_batch(repo_root):
    line = refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--set", "data.limit_train=100"])
    assert "100 training images here, fewer than one batch of 128" in line


def test_refuses_a_dataset_it_cannot_reach(repo_root, tmp_path, monkeypatch):
    cifar = ["plan", str(repo_root / "configs/cifar10.yaml"), "--set", f"data.root={tmp_path / 'data'}"]
    assert "data.download is false" in refusal([*cifar, "--set", "data.download=false"])
    monkeypatch.setattr("rsam_dist.data.CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    assert "cannot be downloaded from here" in refusal(cifar)
    # On a cluster, data/ is not copied to the nodes: without download they would have no CIFAR-10.
    line = refusal(["plan", str(repo_root / "sweeps/glimpses.yaml"), "--cluster",
                    str(repo_root / "cluster/aws-gpu.yaml"), "--set", "data.download=false"])
    assert "is not copied to the nodes" in line


def test_refuses_storage_it_cannot_write(repo_root, tmp_path):
    demo = ["plan", str(repo_root / "sweeps/demo.yaml")]
    assert "is not writable" in refusal([*demo, "--set", "storage=/proc/rsam-dist-runs"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "is a file, not a folder" in refusal([*demo, "--set", f"storage={blocker}/runs"])
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "sweep.yaml").write_text("")
    assert "already holds a sweep" in refusal([*demo, "--set", f"storage={tmp_path}"])
    digits = ["plan", str(repo_root / "configs/digits.yaml")]
    assert "not writable from here" in refusal([*digits, "--set", "train.storage=nosuchfs://bucket/runs"])


def test_accepts_a_writable_storage_uri(repo_root, tmp_path):
    plan = make_plan(repo_root / "configs/digits.yaml", [*FAST_MODEL, f"train.storage=file://{tmp_path}/runs"],
                     budget_s=0.05)
    assert any(check.name == "storage" and "is writable" in check.detail for check in plan.checks)
    assert list((tmp_path / "runs").iterdir()) == []  # the marker was removed


def test_refuses_an_unreachable_dashboard(repo_root):
    line = refusal(["plan", str(repo_root / "sweeps/demo.yaml"), "--address", "http://127.0.0.1:9"])
    assert "cannot read the nodes of the cluster at http://127.0.0.1:9" in line
    with pytest.raises(UserError, match="not both"):
        make_plan(repo_root / "sweeps/demo.yaml", cluster="cluster/aws-gpu.yaml", address="http://127.0.0.1:9")
