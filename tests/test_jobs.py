"""The job commands: submit, status, logs, stop, tensorboard --job.

First what needs no cluster (the registry, bad input and unreachable clusters in one line), then
Ray Jobs against real Ray heads on this machine (marked `ray`). The heads are started with
`ray start --head --block` on free loopback ports and their own --temp-dir, and torn down by
killing exactly the processes each fixture started (never `ray stop`, which would stop every Ray on
the machine).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from processes import descendants, is_running

from rsam_dist.cli import main
from rsam_dist.errors import UserError
from rsam_dist.jobs.dashboard import free_port, job_client, poll, safe_address, use_token_auth
from rsam_dist.jobs.jobs import (
    FINISHED_STATUSES,
    JobRecord,
    job_client_for,
    load_registry,
    plan_job,
    save_record,
    wait_for_status,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
TINY = ["data.name=digits", "data.limit_train=256", "data.limit_test=100", "train.mask_images=0"]
PORT_FLAGS = [
    "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
    "ray-client-server-port",
]


# --- without a cluster ---------------------------------------------------------------------------


@pytest.fixture
def rsam_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RSAM_DIST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RSAM_DIST_REMOTE_RUNS", "/tmp/rsam-test-runs")
    return tmp_path / "home"


def test_unreachable_address_is_one_line(rsam_home):
    result = CliRunner().invoke(main, [
        "submit", "train", str(REPO_ROOT / "configs" / "digits.yaml"), "--address", "http://127.0.0.1:9",
    ])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in result.stderr


def test_unknown_job_without_address_is_one_line(rsam_home):
    for command in (["status", "nope"], ["logs", "nope"], ["stop", "nope"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "unknown job 'nope'" in result.stderr


def test_cluster_that_is_not_up_is_one_line(rsam_home, tmp_path, monkeypatch):
    # `ray dashboard FILE` (the port-forward) finds no head and exits; we say so in one line.
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where `ray dashboard` keeps its cluster state files
    config = yaml.safe_load((REPO_ROOT / "cluster" / "local.yaml").read_text())
    config["cluster_name"] = "rsam-test-not-up"
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["status", "some-job", "--cluster", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "cannot reach the Ray dashboard of" in result.stderr and "not found" in result.stderr
    assert f"ray up {path}" in result.stderr


def test_submit_checks_the_config_before_contacting_anything(rsam_home):
    result = CliRunner().invoke(main, [
        "submit", "train", str(REPO_ROOT / "configs" / "digits.yaml"), "--set", "model.glimps=3",
        "--address", "http://127.0.0.1:9",
    ])
    assert result.exit_code == 2 and "unknown key 'model.glimps'" in result.stderr


def test_submit_refuses_files_outside_the_project(rsam_home, tmp_path):
    outside = tmp_path / "c.yaml"
    outside.write_text("train: {epochs: 1}\n")
    result = CliRunner().invoke(main, ["submit", "train", str(outside), "--address", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "outside the project" in result.stderr


def test_job_plan_runs_from_the_job_directory(rsam_home):
    plan = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.epochs=1"], "rsam-train-x")
    assert plan.file == "configs/digits.yaml"
    assert plan.remote_dir == "/tmp/rsam-test-runs/rsam-train-x"
    assert "cd /tmp/rsam-test-runs/rsam-train-x && " in plan.entrypoint
    assert 'python -m rsam_dist.cli train "$RSAM_PROJECT"/configs/digits.yaml --set train.epochs=1' in plan.entrypoint
    s3 = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.storage=s3://b/runs"], "rsam-train-y")
    assert s3.remote_dir == "s3://b/runs/rsam-train-y" and "train.name=rsam-train-y" in s3.overrides


def test_registry_keeps_jobs_and_ignores_keys_it_does_not_know(rsam_home):
    first = JobRecord(job_id="rsam-train-a", kind="train", file="configs/digits.yaml",
                      remote_dir="/tmp/a", address="http://127.0.0.1:8265", submitted="2026-01-01 10:00:00")
    second = JobRecord(job_id="rsam-sweep-b", kind="sweep", file="sweeps/demo.yaml", remote_dir="/tmp/b",
                       cluster="/abs/cluster/aws-gpu.yaml", overrides=["train.epochs=1"],
                       submitted="2026-01-01 09:00:00")
    save_record(first)
    save_record(second)
    assert load_registry() == {"rsam-train-a": first, "rsam-sweep-b": second}
    document = json.loads((rsam_home / "jobs.json").read_text())
    document["jobs"]["rsam-train-a"]["written_by_a_newer_version"] = 1
    (rsam_home / "jobs.json").write_text(json.dumps(document))
    assert load_registry()["rsam-train-a"] == first
    listed = run("status").splitlines()  # newest last, and where each one runs
    assert [line.split()[0] for line in listed] == ["rsam-sweep-b", "rsam-train-a"]
    assert "on /abs/cluster/aws-gpu.yaml" in listed[0] and "on http://127.0.0.1:8265" in listed[1]


@pytest.mark.parametrize("text", ["{not json", '{"jobs": {"x": {"job_id": "x"}}}', "[]"])
def test_an_unreadable_registry_is_one_line(rsam_home, text):
    rsam_home.mkdir(parents=True)
    (rsam_home / "jobs.json").write_text(text)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "unreadable job registry" in result.stderr and "fix or delete it" in result.stderr


def test_poll_returns_the_first_result_that_holds_or_the_last_one():
    calls = []
    assert poll(lambda: calls.append(1) or len(calls), lambda n: n == 3, timeout_s=5, interval_s=0) == 3
    assert len(calls) == 3
    assert poll(lambda: "RUNNING", lambda s: s in FINISHED_STATUSES, timeout_s=0.05, interval_s=0.01) == "RUNNING"


# --- the cluster edge: where the token goes, what a job uploads ----------------------------------


@pytest.fixture
def no_connections(monkeypatch) -> list:
    """Every connection attempted from this process (each one refused)."""
    import socket

    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise ConnectionRefusedError(f"test: no connection allowed to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("command", [
    ["submit", "train", str(REPO_ROOT / "configs" / "digits.yaml")], ["status", "some-job"],
    ["logs", "some-job"], ["stop", "some-job"],
])
def test_plain_http_to_another_machine_is_refused_before_connecting(rsam_home, no_connections, command):
    # 192.0.2.1 is TEST-NET-1: nothing answers there, and nothing is sent.
    result = CliRunner().invoke(main, [*command, "--address", "http://192.0.2.1:8265"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "plain http to another machine" in result.stderr and "--cluster FILE" in result.stderr
    assert "https://" in result.stderr
    assert no_connections == []


def test_a_recorded_plain_http_address_is_not_replayed(rsam_home, no_connections):
    save_record(JobRecord(job_id="rsam-train-old", kind="train", file="configs/digits.yaml",
                          remote_dir="/tmp/old", address="http://192.0.2.1:8265"))
    result = CliRunner().invoke(main, ["status", "rsam-train-old"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "job rsam-train-old's recorded address http://192.0.2.1:8265: plain http" in result.stderr
    assert no_connections == []


@pytest.mark.parametrize("address", [
    "http://127.0.0.1:8265", "127.0.0.1:8265", "http://localhost:8265/", "http://[::1]:8265", "http://127.8.9.1:1",
    "https://ray.example.com:8443", "HTTPS://10.0.0.7",
])
def test_safe_addresses(address):
    assert safe_address(address).lower().startswith(("http://", "https://"))


@pytest.mark.parametrize(("address", "words"), [
    ("http://10.0.0.7:8265", "plain http"), ("10.0.0.7:8265", "plain http"),
    ("http://127.0.0.1.nip.io:8265", "plain http"), ("http://localhost.evil.example", "plain http"),
    ("ray://127.0.0.1:10001", "not a dashboard URL"), ("http://127.0.0.1:99999", "not a dashboard URL"),
    ("http://:8265", "not a dashboard URL"),
])
def test_unsafe_addresses(address, words):
    with pytest.raises(UserError, match=words):
        safe_address(address)


def test_address_with_cluster_is_refused_before_anything_else(rsam_home):
    # aws-multi-gpu.yaml has worker nodes: validating it would print a storage note first.
    result = CliRunner().invoke(main, [
        "submit", "train", str(REPO_ROOT / "configs" / "digits.yaml"), "--address", "http://127.0.0.1:9",
        "--cluster", str(REPO_ROOT / "cluster" / "aws-multi-gpu.yaml"),
    ])
    assert result.exit_code == 2
    assert result.stderr == "rsam-dist: error: give --address URL or --cluster FILE, not both\n"


def fake_checkout(root: Path) -> Path:
    """A project with the files a job needs and the secrets a checkout tends to collect."""
    for relative in ["rsam_dist/__init__.py", "rsam_dist/jobs/jobs.py", "configs/digits.yaml", "sweeps/demo.yaml",
                     "pyproject.toml", "requirements.lock",
                     ".env", "id_rsa", "aws-credentials.yaml", "notes/todo.txt", "cluster/local.yaml",
                     "configs/.env", "configs/deploy.pem", "configs/ssh.key", "rsam_dist/.secrets.yaml",
                     "rsam_dist/__pycache__/jobs.cpython-311.pyc", "sweeps/credentials.json", ".git/config",
                     "runs/r1/state.pt"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(f"{relative}\n")
    outside = root.parent / "outside-secret.txt"
    outside.write_text("secret\n")
    (root / "configs" / "linked.yaml").symlink_to(outside)
    return root


SHIPPED_FILES = ["configs/digits.yaml", "pyproject.toml", "requirements.lock", "rsam_dist/__init__.py",
                 "rsam_dist/jobs/jobs.py", "sweeps/demo.yaml"]


def test_a_job_uploads_only_what_it_needs(tmp_path):
    from rsam_dist.jobs.upload import shipped_files, staged_project

    root = fake_checkout(tmp_path / "project")
    assert [str(path) for path in shipped_files(root)] == SHIPPED_FILES
    with staged_project(root) as staged:
        uploaded = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        assert uploaded == SHIPPED_FILES
        assert (staged / "configs" / "digits.yaml").read_text() == "configs/digits.yaml\n"
    assert not staged.exists()


def test_submit_hands_ray_the_staged_project(rsam_home, tmp_path, monkeypatch):
    import rsam_dist.jobs.jobs as jobs

    root = fake_checkout(tmp_path / "project")
    (root / "configs" / "digits.yaml").write_text((REPO_ROOT / "configs" / "digits.yaml").read_text())
    monkeypatch.setattr(jobs, "project_root", lambda: root)
    seen = {}

    class Client:  # stands in for Ray's JobSubmissionClient: records what it would pack and upload
        def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
            directory = Path(runtime_env["working_dir"])
            seen["files"] = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
            seen["excludes"] = runtime_env.get("excludes")
            return submission_id

    monkeypatch.setattr(jobs, "job_client", lambda url: Client())
    job_id = jobs.submit_job("train", root / "configs" / "digits.yaml", ["train.epochs=1"],
                             address="http://127.0.0.1:8265")
    assert seen == {"files": SHIPPED_FILES, "excludes": None}
    assert load_registry()[job_id].address == "http://127.0.0.1:8265"


@pytest.mark.parametrize(("relative", "words"), [
    ("cluster/local.yaml", "jobs upload only"), ("configs/.env", "hidden"), ("configs/deploy.pem", "secret"),
    ("notes/todo.txt", "jobs upload only"),
])
def test_submit_refuses_a_file_the_job_would_not_receive(rsam_home, tmp_path, monkeypatch, relative, words):
    import rsam_dist.jobs.jobs as jobs

    root = fake_checkout(tmp_path / "project")
    monkeypatch.setattr(jobs, "project_root", lambda: root)
    with pytest.raises(UserError, match=words):
        jobs.plan_job("train", root / relative, [], "rsam-train-x")


def test_a_sweep_base_outside_the_upload_is_refused(rsam_home, tmp_path, monkeypatch):
    import rsam_dist.jobs.jobs as jobs

    root = fake_checkout(tmp_path / "project")
    (tmp_path / "base.yaml").write_text((REPO_ROOT / "configs" / "digits.yaml").read_text())
    sweep = yaml.safe_load((REPO_ROOT / "sweeps" / "demo.yaml").read_text())
    sweep["base"] = "../../base.yaml"
    (root / "sweeps" / "demo.yaml").write_text(yaml.safe_dump(sweep))
    monkeypatch.setattr(jobs, "project_root", lambda: root)
    with pytest.raises(UserError, match="base: ../../base.yaml would not reach the job"):
        jobs.plan_job("sweep", root / "sweeps" / "demo.yaml", [], "rsam-sweep-x")


@pytest.mark.parametrize("runs", ["/tmp/a>b", "/tmp/a(b)", "~/x;y", "/tmp/*", "relative/dir", "/tmp/a\nb"])
def test_remote_runs_must_be_a_plain_path(monkeypatch, runs):
    from rsam_dist.jobs.jobs import remote_runs

    monkeypatch.setenv("RSAM_DIST_REMOTE_RUNS", runs)
    with pytest.raises(UserError, match="RSAM_DIST_REMOTE_RUNS"):
        remote_runs()


def _save_records(home: str, prefix: str, count: int) -> None:
    os.environ["RSAM_DIST_HOME"] = home
    for index in range(count):
        save_record(JobRecord(job_id=f"{prefix}-{index}", kind="train", file="configs/digits.yaml", remote_dir="/x"))


def test_concurrent_submits_keep_every_record(rsam_home):
    import multiprocessing

    # spawn, not fork: forking a process that already runs torch's and Ray's threads can hang or crash
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_save_records, args=(str(rsam_home), f"w{n}", 20)) for n in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    assert len(load_registry()) == 60


# --- starting and stopping our own Ray heads --------------------------------------------------


@dataclass
class Head:
    process: subprocess.Popen
    temp_dir: Path
    url: str
    gcs_port: int


def start_head(*flags: str, env: dict[str, str] | None = None, autoscaling_yaml: dict | None = None) -> Head:
    # Short temp dir: Ray's unix socket paths must stay under 108 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rsj", dir="/tmp"))
    ports = {flag: free_port() for flag in PORT_FLAGS}
    extra = []
    if autoscaling_yaml is not None:
        autoscaling_yaml["provider"]["gcs_address"] = f"{node_ip()}:{ports['port']}"
        (temp_dir / "autoscaling.yaml").write_text(yaml.safe_dump(autoscaling_yaml))
        extra.append(f"--autoscaling-config={temp_dir / 'autoscaling.yaml'}")
    command = [
        RAY, "start", "--head", "--block", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
        "--disable-usage-stats", *[f"--{flag}={port}" for flag, port in ports.items()], *extra, *flags,
    ]
    head_env = dict(os.environ, RAY_AUTH_MODE="token", **(env or {}))
    # The job's `python` must be this venv's.
    head_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{head_env.get('PATH', '')}"
    with open(temp_dir / "ray-start.log", "w") as log:
        process = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(process, temp_dir, f"http://127.0.0.1:{ports['dashboard-port']}", ports["port"])
    try:
        wait_for_dashboard(head)
    except BaseException:
        stop_head(head)
        raise
    return head


def wait_for_dashboard(head: Head, timeout_s: float = 90.0) -> None:
    from rsam_dist.errors import UserError

    deadline = time.monotonic() + timeout_s
    while True:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited: {(head.temp_dir / 'ray-start.log').read_text()[-2000:]}")
        try:
            job_client(head.url).list_jobs()
            return
        except UserError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def stop_head(head: Head, grace_s: float = 4.0) -> None:
    """SIGTERM the `ray start --block` process and everything it started, then SIGKILL leftovers."""
    pids = descendants(head.process.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(0.2)
    for pid in set(pids) | set(descendants(head.process.pid)):
        if is_running(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    head.process.wait(timeout=10)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def node_ip() -> str:
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_env(tmp_path_factory, shared_head) -> Iterator[Path]:
    """A private job registry and remote-runs directory; token auth for this process's clients.
    These tests start Ray heads of their own, so the session's shared head (conftest) is stopped."""
    shared_head.stop()
    base = tmp_path_factory.mktemp("jobs")
    saved = {key: os.environ.get(key) for key in ("RSAM_DIST_HOME", "RSAM_DIST_REMOTE_RUNS", "RAY_AUTH_MODE")}
    os.environ["RSAM_DIST_HOME"] = str(base / "home")
    os.environ["RSAM_DIST_REMOTE_RUNS"] = str(base / "remote-runs")
    use_token_auth()
    # `ray start` needs a token; HOME is the session's temporary one (conftest), not the real home.
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True)
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_head(job_env) -> Iterator[Head]:
    head = start_head("--num-cpus=2", f"--resources={json.dumps({'train_driver': 4})}")
    yield head
    stop_head(head)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.output}"
    return result.stdout


def submit(url: str, kind: str, file: str, *overrides: str) -> str:
    sets = [part for text in overrides for part in ("--set", text)]
    job_id = run("submit", kind, str(REPO_ROOT / file), "--address", url, *sets).strip()
    assert job_id.startswith(f"rsam-{kind}-")
    return job_id


def wait_for(job_id: str, url: str, timeout_s: float, until: frozenset[str] = FINISHED_STATUSES) -> str:
    with job_client_for(job_id, url, None) as client:
        return wait_for_status(client, job_id, until, timeout_s)


# --- an autoscaled worker (Ray's fake multi-node provider) --------------------------------------

FAKE_CLUSTER = {
    "cluster_name": "rsam-fake",
    "max_workers": 2,
    "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.2,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {"ssh_user": "ubuntu"},
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "max_workers": 0, "node_config": {}},
        "ray.worker.cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}},
    },
    "head_node_type": "ray.head.default",
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
    "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
}


@pytest.mark.slow
@pytest.mark.ray
def test_job_runs_on_an_autoscaled_worker(job_env):
    # The head has no CPUs, so the Train worker can only run on a node the autoscaler adds.
    fake = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}  # check for demand every second
    head = start_head("--num-cpus=0", env=fake, autoscaling_yaml=copy.deepcopy(FAKE_CLUSTER))
    try:
        job_id = submit(head.url, "train", "configs/digits.yaml", "train.epochs=1", *TINY)
        assert wait_for(job_id, head.url, timeout_s=85) == "SUCCEEDED", run("logs", job_id)
        assert "epoch   1/1" in run("logs", job_id)
        from ray.util.state import list_nodes

        workers = [n for n in list_nodes(address=head.url, detail=True) if not n.is_head_node]
        assert workers and workers[0].resources_total.get("CPU") == 1.0
    finally:
        stop_head(head)


# --- one head, several jobs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def train_job(ray_head) -> str:
    job_id = submit(ray_head.url, "train", "configs/digits.yaml", "train.epochs=1", *TINY)
    status = wait_for(job_id, ray_head.url, timeout_s=150)
    assert status == "SUCCEEDED", run("logs", job_id)
    return job_id


@pytest.mark.slow
@pytest.mark.ray
def test_train_job_succeeds_and_logs_its_epochs(train_job):
    assert run("status", train_job).split() == [train_job, "SUCCEEDED"]
    logs = run("logs", train_job)
    assert "epoch   1/1" in logs and "final test top-1" in logs
    assert "epoch   1/1" in run("logs", train_job, "--follow")  # a finished job: prints and returns
    assert train_job in run("status")  # the registry lists it


@pytest.mark.slow
@pytest.mark.ray
def test_the_job_received_only_the_shipped_files(train_job, ray_head):
    # Ray unpacks the uploaded working_dir on the head: it holds the allow-list and nothing else
    # (no tests/, cluster/, .git, README, nor anything untracked beside them).
    from rsam_dist.jobs.upload import shipped_files

    unpacked = [path for path in ray_head.temp_dir.rglob("working_dir_files/*") if path.is_dir()]
    assert len(unpacked) == 1, unpacked
    received = sorted(str(path.relative_to(unpacked[0])) for path in unpacked[0].rglob("*")
                      if path.is_file() and "__pycache__" not in path.parts)
    assert received == [str(path) for path in shipped_files(REPO_ROOT)]
    assert {path.name for path in unpacked[0].iterdir()} <= {"rsam_dist", "configs", "sweeps", "pyproject.toml",
                                                              "requirements.lock"}


@pytest.mark.slow
@pytest.mark.ray
def test_train_job_outputs_land_in_the_job_directory(train_job, job_env):
    job_dir = job_env / "remote-runs" / train_job
    assert len(list(job_dir.glob("runs/*/config.yaml"))) == 1
    record = json.loads((job_env / "home" / "jobs.json").read_text())["jobs"][train_job]
    assert record["remote_dir"] == str(job_dir) and record["kind"] == "train"
    assert record["file"] == "configs/digits.yaml"


@pytest.mark.slow
@pytest.mark.ray
def test_tensorboard_collects_the_jobs_event_files(train_job, job_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = job_env / "tb"
    printed = run("tensorboard", "--job", train_job, "--out", str(out), "--no-launch")
    assert f"tensorboard --logdir {out} --host 127.0.0.1" in printed
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert files
    accumulator = EventAccumulator(str(files[0]))
    accumulator.Reload()
    assert "test/top1" in accumulator.Tags()["scalars"]
    assert [event.step for event in accumulator.Scalars("test/top1")] == [1]


@pytest.mark.slow
@pytest.mark.ray
def test_stop_stops_a_long_job(ray_head):
    job_id = submit(ray_head.url, "train", "configs/digits.yaml", "train.epochs=100", *TINY)
    started = wait_for(job_id, ray_head.url, timeout_s=60, until=frozenset({"RUNNING", *FINISHED_STATUSES}))
    assert started == "RUNNING"
    time.sleep(3)  # into the Ray Train run
    assert run("stop", job_id).split() == [job_id, "STOPPED"]
    assert run("status", job_id).split()[:2] == [job_id, "STOPPED"]


@pytest.mark.slow
@pytest.mark.ray
def test_a_failing_job_reports_its_one_line_error(ray_head, job_env):
    # A UserError in the job (here: the run directory is taken) ends it FAILED, and `status` shows
    # rsam-dist's one line rather than Ray's wall of log tail.
    taken = job_env / "taken-storage" / "taken"
    taken.mkdir(parents=True)
    (taken / "config.yaml").write_text("{}\n")
    job_id = submit(ray_head.url, "train", "configs/digits.yaml", f"train.storage={taken.parent}",
                    "train.name=taken", *TINY)
    assert wait_for(job_id, ray_head.url, timeout_s=60) == "FAILED"
    line = run("status", job_id)
    assert line.startswith(f"{job_id}  FAILED  (rsam-dist: error: {taken} already holds a run")
    assert line.count("\n") == 1


@pytest.mark.slow
@pytest.mark.ray
def test_unknown_job_on_a_live_cluster_is_one_line(ray_head):
    result = CliRunner().invoke(main, ["status", "rsam-train-nope", "--address", ray_head.url])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "rsam-dist: error: job rsam-train-nope does not exist on that cluster")


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_job(ray_head, job_env):
    # The demo sweep cut to 2 one-epoch trials on a slice of digits.
    job_id = submit(ray_head.url, "sweep", "sweeps/demo.yaml", "search={model.glimpses: {grid: [1, 2]}}",
                    "train.epochs=1", *TINY)
    status = wait_for(job_id, ray_head.url, timeout_s=180)
    logs = run("logs", job_id)
    assert status == "SUCCEEDED", logs
    assert "2 trials" in logs
    results = list((job_env / "remote-runs" / job_id).glob("runs/demo/results.csv"))
    assert len(results) == 1 and len(results[0].read_text().splitlines()) == 3  # header + 2 trials
    out = job_env / "tb-sweep"
    run("tensorboard", "--job", job_id, "--out", str(out), "--no-launch")
    assert len({path.parent for path in out.rglob("events.out.tfevents.*")}) >= 2  # one per trial at least


def test_job_plan_for_a_sweep_on_g2_places_cpu_trials(rsam_home):
    from rsam_dist.jobs.jobs import plan_job
    from rsam_dist.ray_train import build_trainer
    from rsam_dist.runs import RunDir
    from rsam_dist.sweep.config import load_sweep

    g2 = str(REPO_ROOT / "cluster" / "aws-g2.yaml")
    plan = plan_job("sweep", REPO_ROOT / "sweeps" / "glimpses.yaml", [], "rsam-sweep-x", cluster=g2)
    assert "trial.gpus_per_worker=0" in plan.overrides  # `auto`, settled before any node is up
    assert "--set trial.gpus_per_worker=0" in plan.entrypoint
    sweep = load_sweep(REPO_ROOT / "sweeps" / "glimpses.yaml", plan.overrides).for_cluster(cluster_gpus=0)
    trial = sweep.trial_config({"model.glimpses": 4, "train.seed": 0})
    scaling = build_trainer(trial, RunDir("/tmp/rsam-test-runs/x/trials", "t0")).scaling_config
    assert scaling.use_gpu is False and scaling.resources_per_worker == {"CPU": 1.0}  # packed by CPUs


def test_job_plan_leaves_auto_to_a_cluster_that_may_have_gpus(rsam_home):
    from rsam_dist.jobs.jobs import plan_job

    gpu = str(REPO_ROOT / "cluster" / "aws-gpu.yaml")  # GPU count read from the instance type by Ray
    plan = plan_job("sweep", REPO_ROOT / "sweeps" / "glimpses.yaml", [], "rsam-sweep-y", cluster=gpu)
    assert not any(text.startswith("trial.gpus_per_worker") for text in plan.overrides)


@pytest.mark.parametrize("kind, file, override", [
    ("sweep", "sweeps/glimpses.yaml", "trial.gpus_per_worker=0.25"),
    ("train", "configs/cifar10.yaml", "scaling.gpus_per_worker=1"),
])
def test_job_asking_g2_for_a_gpu_fails_at_submit_in_one_line(rsam_home, kind, file, override):
    result = CliRunner().invoke(main, [
        "submit", kind, str(REPO_ROOT / file), "--set", override,
        "--cluster", str(REPO_ROOT / "cluster" / "aws-g2.yaml"),
    ])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "offers Ray no GPU" in result.stderr and "cluster/aws-gpu.yaml" in result.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_plan_reads_a_running_cluster_through_its_dashboard(ray_head):
    output = run("plan", str(REPO_ROOT / "sweeps/demo.yaml"), "--address", ray_head.url,
                 "--set", "model.hidden_size=64", "--set", "optim.batch_size=32")
    assert f"on the running cluster at {ray_head.url} (1 live nodes)" in output
    assert "2 CPUs, no GPU, train_driver 4; head" in output
    assert "At once: 2 trial(s), limited by the CPUs of the cluster's live nodes" in output
