"""Ray Train on real local clusters: DDP semantics, several nodes, worker failure, resume, TensorBoard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rsam_dist.config import load_config
from rsam_dist.ray_train import train_on_ray
from rsam_dist.runs import RunDir

pytestmark = pytest.mark.ray

RSAM_DIST = [sys.executable, "-m", "rsam_dist.cli"]


def fit_on_ray(config, **options) -> tuple[str, dict]:
    """`train_on_ray` in the run directory `config` names: (run directory, final metrics)."""
    run = RunDir.for_config(config)
    return run.path, train_on_ray(run, config, **options)


def digits_config(tmp_path: Path, name: str, *overrides: str):
    return load_config(
        None,
        [
            "data.name=digits",
            "train.mask_images=4",
            f"train.storage={tmp_path}",
            f"train.name={name}",
            *overrides,
        ],
    )


def scalars(run_dir: str | Path, tag: str) -> dict[int, list[float]]:
    """Every value logged under `tag`, by step, over all event files of the run."""
    by_step: dict[int, list[float]] = {}
    for events in sorted(Path(run_dir, "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                by_step.setdefault(event.step, []).append(event.value)
    return by_step


def test_two_workers_follow_the_single_worker_trajectory(tmp_path):
    # Same seed, same global batch of 128, same data order: rank r takes the r-th half of every
    # global batch. Plain BatchNorm normalises each half with its own statistics (SyncBatchNorm
    # needs GPUs), so the trajectories agree closely but not bit for bit.
    common = ["data.limit_train=512", "data.limit_test=200", "train.epochs=3"]
    one_path, _ = fit_on_ray(digits_config(tmp_path, "one", *common))
    two_path, two_metrics = fit_on_ray(digits_config(tmp_path, "two", *common, "scaling.num_workers=2"))
    one = [values[0] for _, values in sorted(scalars(one_path, "train/loss").items())]
    two = [values[0] for _, values in sorted(scalars(two_path, "train/loss").items())]
    assert len(one) == len(two) == 3
    assert one[-1] < one[0]  # it learned
    for loss_one, loss_two in zip(one, two, strict=True):
        assert loss_two == pytest.approx(loss_one, rel=0.03)
    assert two_metrics["epoch"] == 3
    check_event_files(one_path)


def check_event_files(path: str) -> None:
    """Rank 0's event file holds the scalars, the mask grids, the hparams summary and the config."""
    files = list(Path(path, "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    accumulator = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in ("train/loss", "train/lr", "test/top1", "test/top1_glimpse_1", "test/top1_glimpse_4",
                "speed/images_per_sec", "speed/epoch_seconds", "hparams/final_test_top1"):
        assert tag in tags["scalars"], tag
    assert [event.step for event in accumulator.Scalars("test/top1")] == [1, 2, 3]
    assert "masks/figure1" in tags["images"]
    assert len(accumulator.Images("masks/figure1")) == 3  # one figure per epoch
    figure = accumulator.Images("masks/figure1")[0]
    assert figure.width >= 9 * 32 * 4  # the image, then a mask and a masked image per glimpse, 4x
    assert "config/text_summary" in tags["tensors"]
    assert "_hparams_/session_start_info" in accumulator.PluginTagToContent("hparams")


def test_two_nodes_strict_spread(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1"},
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        config = digits_config(
            tmp_path, "spread", "data.limit_train=256", "data.limit_test=100", "train.epochs=2",
            "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD",
        )
        path, metrics = fit_on_ray(config, address=cluster.address)
        assert metrics["epoch"] == 2
        assert Path(path, "best", "state.pt").is_file()
    finally:
        cluster.shutdown()


def _committed_epoch(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train has committed (every rank reported)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        state = json.loads(snapshot.read_text())
        return int(state["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _wait_for_epoch(run_dir: Path, epoch: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while _committed_epoch(run_dir) < epoch:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} within {timeout} s"
        time.sleep(0.2)


def _train_worker_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _write_config(tmp_path: Path, epochs: int, workers: int) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(
        f"data: {{name: digits, limit_train: 640, limit_test: 200}}\n"
        f"train: {{epochs: {epochs}, storage: {tmp_path}, name: run, max_failures: 1, mask_images: 2}}\n"
        f"scaling: {{num_workers: {workers}}}\n"
    )
    return path


def _train_past_first_epoch(tmp_path: Path, epochs: int, workers: int) -> tuple[subprocess.Popen, Path]:
    """`rsam-dist train` in a subprocess, returned once epoch 1's checkpoint is committed."""
    config = _write_config(tmp_path, epochs=epochs, workers=workers)
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [*RSAM_DIST, "train", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _wait_for_epoch(run_dir, 1, process)
    return process, run_dir


def test_a_killed_worker_is_replaced_and_the_run_resumes(tmp_path):
    process, run_dir = _train_past_first_epoch(tmp_path, epochs=4, workers=2)
    victims = _train_worker_pids()
    assert len(victims) == 2
    os.kill(victims[-1], signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "resuming from the checkpoint of epoch" in output
    logged = scalars(run_dir, "train/loss")
    assert sorted(logged) == [1, 2, 3, 4]  # every epoch finished
    redone = [step for step, values in logged.items() if len(values) > 1]
    assert len(redone) <= 1, f"epochs redone: {redone}"


def test_resume_of_a_stopped_run_finishes_only_the_remaining_epochs(tmp_path):
    process, run_dir = _train_past_first_epoch(tmp_path, epochs=3, workers=1)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    process.communicate(timeout=120)
    done = _committed_epoch(run_dir)
    assert 1 <= done < 3
    resumed = subprocess.run(
        [*RSAM_DIST, "train", "--resume", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ran = [int(epoch) for epoch in re.findall(r"epoch +(\d+)/3 ", resumed.stdout)]
    assert ran == list(range(done + 1, 4))
    assert f"resuming from the checkpoint of epoch {done}" in resumed.stdout
    assert _committed_epoch(run_dir) == 3


def test_a_user_error_on_the_workers_stays_a_user_error(tmp_path, monkeypatch):
    import rsam_dist.ray_train as ray_train
    from rsam_dist.errors import UserError

    # Skip the driver's own data check, so the missing dataset is found on a worker (as on a cluster).
    monkeypatch.setattr(ray_train, "load_dataset", lambda data_config: None)
    config = load_config(None, [f"data.root={tmp_path / 'empty'}", "data.download=false", "train.epochs=1",
                                "train.max_failures=0", f"train.storage={tmp_path}", "train.name=missing"])
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        fit_on_ray(config)
