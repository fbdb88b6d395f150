"""Runs on URI storage: TensorBoard events and metrics.jsonl land in the storage itself, so that
`rsam-dist tensorboard s3://...` finds them. Against a real S3-compatible server (moto's, started
on loopback by the tests) and a file:// URI.

The fast tests train in this process with the recorder rank 0 uses on Ray; the `ray` one runs
`rsam-dist train` on Ray Train with s3:// storage end to end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs
import pytest
from click.testing import CliRunner
from moto.server import ThreadedMotoServer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rsam_dist.cli import main
from rsam_dist.config import DEBUG_MODEL, load_config
from rsam_dist.recorder import EpochRecorder
from rsam_dist.runs import METRICS_FILE, RunDir, append_metrics, read_metrics, with_run_dir
from rsam_dist.training import fit

REPO = Path(__file__).resolve().parents[1]
BUCKET = "rsam-test"
SMALL = (*DEBUG_MODEL, "data.limit_train=256", "data.limit_test=128", "train.epochs=2", "train.mask_images=2")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API on 127.0.0.1 (moto's server) with one bucket; the AWS_* variables point
    pyarrow (and Ray's storage, and child processes) at it for the module's tests."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    settings = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True,
                                access_key="testing", secret_key="testing").create_dir(BUCKET)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def train_with_recorder(run: RunDir) -> None:
    """Two epochs in this process, recorded by the EpochRecorder that rank 0 runs on Ray."""
    config = with_run_dir(load_config(REPO / "configs/digits.yaml", SMALL), run)
    recorder = EpochRecorder(config, run, quiet=True)
    state = fit(config, lambda result, state: recorder.record(result, state))
    recorder.finish(state)


def object_names(uri: str) -> list[str]:
    filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return sorted(info.path[len(root):].lstrip("/") for info in infos if info.type == pyarrow.fs.FileType.File)


def collected_scalars(source: str, target: Path) -> dict[str, list[int]]:
    """`rsam-dist tensorboard SOURCE --no-launch`, then each gathered scalar tag -> its steps."""
    result = CliRunner().invoke(main, ["tensorboard", source, "--out", str(target), "--no-launch"])
    assert result.exit_code == 0, result.output
    event_files = sorted(target.rglob("events.out.tfevents.*"))
    assert event_files, result.output
    steps: dict[str, list[int]] = {}
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return steps


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_events_and_metrics_land_in_uri_storage(scheme, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in ./runs/ of the working directory
    storage = f"s3://{BUCKET}/{tmp_path.name}" if scheme == "s3" else f"file://{tmp_path}/store"
    run = RunDir(storage, "r")
    train_with_recorder(run)

    names = object_names(run.path)
    assert METRICS_FILE in names and "best/state.pt" in names, names
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in names), names
    assert [int(record["epoch"]) for record in read_metrics(run)] == [1, 2]
    steps = collected_scalars(run.path, tmp_path / "gathered")
    assert sorted(steps["test/top1"]) == [1, 2]
    assert not (tmp_path / "runs").exists(), "events went to the working directory, not the storage"
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("rsam-tensorboard-*/events.*")), \
        "the staging folder was left behind"


def test_uri_metrics_after_a_torn_write_keep_every_epoch(s3_endpoint, tmp_path):
    run = RunDir(f"s3://{BUCKET}/{tmp_path.name}", "torn")
    append_metrics(run, {"epoch": 1, "test_top1": 0.5})
    filesystem, path = pyarrow.fs.FileSystem.from_uri(run.file(METRICS_FILE))
    with filesystem.open_input_stream(path) as stream:
        whole = stream.readall()
    with filesystem.open_output_stream(path) as stream:
        stream.write(whole + b'{"epoch": 2, "test_to')  # a writer that died mid-line
    append_metrics(run, {"epoch": 2, "test_top1": 0.6})
    assert read_metrics(run) == [{"epoch": 1, "test_top1": 0.5}, {"epoch": 2, "test_top1": 0.6}]


def test_local_metrics_after_a_torn_write_keep_every_epoch(tmp_path):
    run = RunDir(str(tmp_path), "torn")
    append_metrics(run, {"epoch": 1, "test_top1": 0.5})
    with open(tmp_path / "torn" / METRICS_FILE, "ab") as handle:
        handle.write(b'{"epoch": 2, "test_to')  # a crash mid-line; the resumed run redoes epoch 2
    append_metrics(run, {"epoch": 2, "test_top1": 0.6})
    assert read_metrics(run) == [{"epoch": 1, "test_top1": 0.5}, {"epoch": 2, "test_top1": 0.6}]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_on_s3_storage_end_to_end(s3_endpoint, tmp_path):
    """`rsam-dist train` on Ray Train with s3:// storage: checkpoints, metrics and events in the bucket."""
    storage = f"s3://{BUCKET}/ray-{tmp_path.name}"
    command = [sys.executable, "-m", "rsam_dist.cli", "train", str(REPO / "configs/digits.yaml"),
               "--set", f"train.storage={storage}", "--set", "train.name=r"]
    for override in SMALL:
        command += ["--set", override]
    environment = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"rsam-dist tensorboard {storage}/r" in done.stdout

    names = object_names(f"{storage}/r")
    assert "config.yaml" in names and METRICS_FILE in names, names
    assert any(name.startswith("checkpoint_") and name.endswith("/state.pt") for name in names), names
    assert [int(record["epoch"]) for record in read_metrics(RunDir(storage, "r"))] == [1, 2]
    assert sorted(collected_scalars(f"{storage}/r", tmp_path / "gathered")["test/top1"]) == [1, 2]
    assert not (tmp_path / "runs").exists(), "events went to the working directory, not the storage"
