"""Ray Jobs for `rsam-dist submit|status|logs|stop`: run train or sweep on a running cluster.

    rsam-dist submit train configs/digits.yaml --cluster cluster/aws-gpu.yaml   # prints JOB_ID
    rsam-dist submit sweep sweeps/demo.yaml --address http://127.0.0.1:8265
    rsam-dist status JOB_ID ; rsam-dist logs JOB_ID --follow ; rsam-dist stop JOB_ID

How a job runs. The project (this checkout, minus .venv, .git, runs, data, sweeps-out, caches)
is uploaded as the job's working directory, so the code you submit is the code that runs, on the
driver and on every Ray worker. The entrypoint is `python -m rsam_dist.cli train|sweep FILE --set
...`, started on the head node from the directory

    ~/rsam-dist-runs/JOB_ID/            (on the head; REMOTE_RUNS below)

so everything the run writes to a relative path (train.storage "runs", a sweep's "sweeps-out")
lands there, in one place per job, where `rsam-dist tensorboard --job JOB_ID` finds it (through
`ray rsync-down` for a --cluster job). An absolute or s3:// train.storage is used as given.
Train jobs read CIFAR-10 from ~/rsam-dist-data on each node unless data.root is set, so a node
downloads it once, not once per job.

Where the dashboard is. `--address URL` is the dashboard's URL (http://HOST:8265). `--cluster
FILE` runs `ray dashboard FILE` (Ray's own SSH port-forward) for the duration of the command:
the dashboard never listens on a public port. Each submitted job is recorded in
$RSAM_DIST_HOME/jobs.json (default ~/.rsam-dist/jobs.json), so later commands need only its id.

Clients of a `ray start` cluster authenticate with the shared token (~/.ray/auth_token), which
Ray only sends when RAY_AUTH_MODE=token; it is set here when unset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rsam_dist.errors import UserError

REMOTE_RUNS = "~/rsam-dist-runs"
"""Per-job directories on the head node (expanded by the head's shell); $RSAM_DIST_REMOTE_RUNS
overrides it (the tests point it at a temporary directory)."""
REMOTE_DATA = "~/rsam-dist-data"
"""data.root for train jobs that leave it relative: one CIFAR-10 copy per node."""
KINDS = ("train", "sweep")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
WORKING_DIR_EXCLUDES = [
    ".venv", ".git", "runs", "data", "sweeps-out", "__pycache__", "*.egg-info",
    ".pytest_cache", ".ruff_cache",
]
PORT_FORWARD_TIMEOUT_S = 90.0
# Ray's client loggers; the two SDK ones set INFO themselves, so quieting "ray" alone is not enough.
QUIET_LOGGERS = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


# --- the job registry (~/.rsam-dist/jobs.json) ---------------------------------------------------


@dataclass
class JobRecord:
    job_id: str
    kind: str
    file: str
    """The config or sweep file, relative to the project root (as the job saw it)."""
    remote_dir: str
    """Where the job's outputs are: a path on the head node (may start with ~) or a URI."""
    address: str | None = None
    """The dashboard URL given with --address (None for --cluster jobs)."""
    cluster: str | None = None
    """The absolute path of the cluster file given with --cluster."""
    overrides: list[str] = field(default_factory=list)
    submitted: str = ""

    def where(self) -> str:
        return self.cluster or self.address or "?"


def rsam_home() -> Path:
    return Path(os.environ.get("RSAM_DIST_HOME") or "~/.rsam-dist").expanduser()


def registry_path() -> Path:
    return rsam_home() / "jobs.json"


def load_registry() -> dict[str, JobRecord]:
    path = registry_path()
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable job registry ({err}); fix or delete it") from None
    known = set(JobRecord.__dataclass_fields__)
    return {job_id: JobRecord(**{k: v for k, v in entry.items() if k in known})
            for job_id, entry in raw.get("jobs", {}).items()}


def save_record(record: JobRecord) -> None:
    records = load_registry()
    records[record.job_id] = record
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"jobs": {k: asdict(v) for k, v in records.items()}}, indent=2) + "\n")
    temporary.replace(path)


def find_record(job_id: str) -> JobRecord | None:
    return load_registry().get(job_id)


def list_jobs() -> str:
    """The recorded jobs, newest last (no cluster is contacted)."""
    records = sorted(load_registry().values(), key=lambda r: r.submitted)
    if not records:
        return f"no jobs submitted from this machine yet ({registry_path()})"
    return "\n".join(f"{r.job_id}  {r.kind:<5}  {r.file}  on {r.where()}  ({r.submitted})" for r in records)


# --- reaching the dashboard ------------------------------------------------------------------


def use_token_auth() -> None:
    """Ray 2.59+ `ray start` clusters require the token; Ray only sends it in token mode."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:  # Ray already read its config in this process: refresh it
        from ray._raylet import Config

        Config.initialize("")


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


@contextmanager
def dashboard_url(address: str | None = None, cluster: str | None = None) -> Iterator[str]:
    """The dashboard's URL: --address as given, or a `ray dashboard FILE` port-forward while open."""
    if address and cluster:
        raise UserError("give --address URL or --cluster FILE, not both")
    if address:
        yield normalise_address(address)
        return
    if not cluster:
        raise UserError("where is the cluster? give --cluster cluster/X.yaml or --address http://HOST:8265")
    with port_forward(cluster) as url:
        yield url


@contextmanager
def port_forward(cluster: str) -> Iterator[str]:
    """Run `ray dashboard CLUSTER --port P` (an SSH tunnel) and yield http://127.0.0.1:P."""
    if not Path(cluster).is_file():
        raise UserError(f"{cluster}: no such cluster file")
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    command = [ray_executable(), "dashboard", str(cluster), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + PORT_FORWARD_TIMEOUT_S
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                why = last_error_line(log.read()) or f"no port-forward after {PORT_FORWARD_TIMEOUT_S:.0f} s"
                raise UserError(
                    f"cannot reach the Ray dashboard of {cluster} through `ray dashboard`: {why}; "
                    f"start the cluster with `ray up {cluster}` (and check your cloud credentials)"
                )
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def last_error_line(output: str) -> str:
    """The line of a `ray` command's output that says what went wrong (no colours, no prefix)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    causes = [line.removeprefix("The exception is: ") for line in lines if line.startswith("The exception is: ")]
    errors = [line for line in lines if re.search(r"(Error|Exception|error:|not found)", line)]
    return ((causes or errors or lines or [""])[-1])[:200]


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def quiet_ray_logs() -> Iterator[None]:
    """Ray's client-side INFO/WARNING lines (packaging the working dir, websocket closed) are noise."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def job_client(url: str):
    """A JobSubmissionClient for `url`, or a one-line UserError if nothing answers there."""
    use_token_auth()
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 - ConnectionError, requests errors, auth errors
        detail = " ".join(str(err).split())[:160]
        hint = "check ~/.ray/auth_token matches the cluster's" if "auth" in detail.lower() else (
            "start the cluster with `ray up CLUSTER.yaml` (or `ray start --head`) or check --address")
        raise UserError(f"cannot reach the Ray dashboard at {url}: {hint} ({detail})") from None


@contextmanager
def job_client_for(job_id: str | None, address: str | None, cluster: str | None) -> Iterator[Any]:
    """The client for a job: the --address/--cluster given, else where the registry says it runs."""
    if not (address or cluster):
        record = find_record(job_id) if job_id else None
        if record is None:
            raise UserError(f"unknown job {job_id!r}: it is not in {registry_path()}; "
                            "pass --address URL or --cluster FILE")
        address, cluster = record.address, record.cluster
    with dashboard_url(address, cluster) as url, quiet_ray_logs():
        yield job_client(url)


def _call(what: str, job_id: str, function: Callable[[], Any]) -> Any:
    """Run a client call; Ray's 'job does not exist' and HTTP errors become one-line UserErrors."""
    try:
        return function()
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if "does not exist" in text or "404" in text:
            raise UserError(f"job {job_id} does not exist on that cluster") from None
        raise UserError(f"{what} {job_id}: {text[:200]}") from None
    except OSError as err:  # ConnectionError, requests' and aiohttp's connection errors
        detail = " ".join(str(err).split())[:160]
        raise UserError(f"{what} {job_id}: lost the Ray dashboard ({detail})") from None


# --- submit --------------------------------------------------------------------------------------


def project_root() -> Path:
    """The checkout rsam_dist is imported from (the directory holding pyproject.toml)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise UserError(f"{root}: not an rsam-dist checkout (no pyproject.toml); "
                        "submit from a clone installed with `pip install -e .`")
    return root


def new_job_id(kind: str) -> str:
    return f"rsam-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass
class JobPlan:
    """What submit_job sends: entrypoint, extra overrides and where the outputs will be."""

    file: str
    overrides: list[str]
    remote_dir: str
    entrypoint: str
    cluster_config: dict[str, Any] | None = None
    """The --cluster file as Ray prepares it (validated), or None for --address jobs."""


def plan_job(kind: str, file: str | Path, overrides: tuple[str, ...] | list[str], job_id: str,
             cluster: str | None = None) -> JobPlan:
    """Check FILE here (fail fast, exit 2) and build the job's entrypoint.

    With a `cluster` file, GPUs are settled against what it declares: on one that offers Ray no
    GPU (cluster/aws-g2.yaml), `gpus_per_worker: auto` becomes 0 and an explicit GPU fails now.
    """
    if kind not in KINDS:
        raise UserError(f"unknown job kind {kind!r}: use one of {', '.join(KINDS)}")
    cluster_config, cluster_gpus = None, None
    if cluster:
        from rsam_dist.cluster_config import validate_cluster_file
        from rsam_dist.gpu_check import declared_cluster_gpus

        cluster_config = validate_cluster_file(cluster)
        cluster_gpus = declared_cluster_gpus(cluster_config)
    root = project_root()
    path = Path(file).resolve()
    if not path.is_file():
        raise UserError(f"{file}: no such file")
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        raise UserError(f"{file}: outside the project {root}; jobs ship the project, so put the file in "
                        "configs/ or sweeps/") from None
    overrides = list(overrides)
    job_dir = f"{remote_runs()}/{job_id}"
    if kind == "train":
        overrides, remote_dir = _plan_train(path, overrides, job_dir, cluster, cluster_gpus)
    else:
        overrides, remote_dir = _plan_sweep(path, overrides, job_dir, cluster, cluster_gpus)
    sets = "".join(f" --set {shlex.quote(text)}" for text in overrides)
    # From the job directory on the head, with the shipped project first on the import path.
    entrypoint = (
        f'export RSAM_PROJECT="$PWD" && mkdir -p {job_dir} && cd {job_dir} && '
        f'PYTHONPATH="$RSAM_PROJECT${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'python -m rsam_dist.cli {kind} "$RSAM_PROJECT"/{shlex.quote(relative)}{sets}'
    )
    return JobPlan(relative, overrides, remote_dir, entrypoint, cluster_config)


def _plan_train(path: Path, overrides: list[str], job_dir: str, cluster: str | None,
                cluster_gpus: float | None) -> tuple[list[str], str]:
    from rsam_dist.config import load_config
    from rsam_dist.gpu_check import settle_gpus
    from rsam_dist.runs import is_uri

    config = load_config(path, overrides)  # a bad file or --set fails here, not on the cluster
    settle_gpus(config.scaling.gpus_per_worker, cluster_gpus, cluster, "scaling.gpus_per_worker")
    extra = _data_root_override(config.data.root, overrides)
    storage = config.train.storage
    if is_uri(storage) or _is_absolute(storage):
        name = config.train.name
        if not name:
            name = Path(job_dir).name
            extra.append(f"train.name={name}")
        return overrides + extra, f"{storage.rstrip('/')}/{name}"
    return overrides + extra, job_dir  # relative storage: under the job directory


def _plan_sweep(path: Path, overrides: list[str], job_dir: str, cluster: str | None,
                cluster_gpus: float | None) -> tuple[list[str], str]:
    from rsam_dist.gpu_check import settle_gpus
    from rsam_dist.sweep_config import load_sweep

    sweep = load_sweep(path, overrides)  # a bad sweep file or --set fails here
    extra = _data_root_override(sweep.base.data.root, overrides)
    requested = sweep.spec.trial.gpus_per_worker
    if settle_gpus(requested, cluster_gpus, cluster, "trial.gpus_per_worker") != requested:
        extra.append("trial.gpus_per_worker=0")  # auto on a cluster without GPUs: CPU trials
    storage = sweep.spec.storage
    if _is_absolute(storage):
        return overrides + extra, f"{storage.rstrip('/')}/{sweep.spec.name}"
    return overrides + extra, job_dir


def _data_root_override(root: str, overrides: list[str]) -> list[str]:
    """data.root=~/rsam-dist-data unless the user set it or it is absolute: one CIFAR-10 per node."""
    given = {text.partition("=")[0].strip() for text in overrides}
    return [] if "data.root" in given or _is_absolute(root) else [f"data.root={REMOTE_DATA}"]


def remote_runs() -> str:
    runs = os.environ.get("RSAM_DIST_REMOTE_RUNS") or REMOTE_RUNS
    if not _is_absolute(runs) or any(c.isspace() or c in "'\"$`;&|" for c in runs):
        raise UserError(f"RSAM_DIST_REMOTE_RUNS={runs!r}: must be an absolute (or ~/) path without "
                        "spaces or shell characters")
    return runs.rstrip("/")


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "~"))


def submit_job(
    kind: str,
    file: str | Path,
    overrides: tuple[str, ...] | list[str] = (),
    address: str | None = None,
    cluster: str | None = None,
    notify: Callable[[str], Any] | None = None,
) -> str:
    """Submit `rsam-dist KIND FILE --set ...` as a Ray job; record it; return the job id.

    `notify` receives advice that is not an error (e.g. shared storage for multi-node clusters).
    """
    job_id = new_job_id(kind)
    plan = plan_job(kind, file, overrides, job_id, cluster)
    cluster_path = str(Path(cluster).resolve()) if cluster else None
    prepared = plan.cluster_config
    if prepared and notify and "://" not in plan.remote_dir:
        if _has_worker_nodes(prepared) and not _workers_mount_runs(prepared):
            notify(f"note: outputs go to {plan.remote_dir} on the head; Train workers on other nodes "
                   "keep theirs on their own disks: for checkpoints, --resume and TensorBoard in one "
                   "place add --set train.storage=s3://BUCKET/PATH (see the cluster file's header)")
    with dashboard_url(address, cluster) as url, quiet_ray_logs():
        client = job_client(url)
        runtime_env = {
            "working_dir": str(project_root()),
            "excludes": WORKING_DIR_EXCLUDES,
            "env_vars": {"RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"},
        }
        submitted = _call("submitting", job_id, lambda: client.submit_job(
            entrypoint=plan.entrypoint,
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata={"rsam_kind": kind, "rsam_file": plan.file},
        ))
    save_record(JobRecord(
        job_id=submitted, kind=kind, file=plan.file, remote_dir=plan.remote_dir,
        address=normalise_address(address) if address else None, cluster=cluster_path,
        overrides=plan.overrides, submitted=time.strftime("%Y-%m-%d %H:%M:%S"),
    ))
    return submitted


def _has_worker_nodes(config: dict[str, Any]) -> bool:
    head = config.get("head_node_type")
    return any(name != head and node.get("max_workers", 0) > 0
               for name, node in config.get("available_node_types", {}).items()) or (
        config["provider"]["type"] == "local" and config.get("max_workers", 0) > 0)


def _workers_mount_runs(config: dict[str, Any]) -> bool:
    """Workers mount the head's runs directory (cluster/aws-g2.yaml, over NFS): one place already."""
    return any("mount" in command and Path(REMOTE_RUNS).name in command
               for command in config.get("worker_setup_commands") or [])


# --- status, logs, stop --------------------------------------------------------------------------


def job_status(job_id: str, address: str | None = None, cluster: str | None = None) -> tuple[str, str]:
    """(status, message): PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, and Ray's note on it."""
    with job_client_for(job_id, address, cluster) as client:
        info = _call("status of", job_id, lambda: client.get_job_info(job_id))
    return str(info.status), (info.message or "").strip()


def describe_status(job_id: str, address: str | None = None, cluster: str | None = None) -> str:
    status, message = job_status(job_id, address, cluster)
    line = f"{job_id}  {status}"
    if status in {"FAILED", "STOPPED"} and message:
        # A failed entrypoint's message ends with its last output; our one-line error is the news.
        ours = [text for text in message.splitlines() if text.startswith("rsam-dist: ")]
        line += f"  ({ours[-1] if ours else ' '.join(message.split())[:200]})"
    return line


def wait_for_job(job_id: str, timeout_s: float, address: str | None = None, cluster: str | None = None,
                 until: set[str] | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job's status is in `until` (default: finished); return that status."""
    until = until or TERMINAL
    deadline = time.monotonic() + timeout_s
    with job_client_for(job_id, address, cluster) as client:
        while True:
            status = str(_call("status of", job_id, lambda: client.get_job_status(job_id)))
            if status in until or time.monotonic() > deadline:
                return status
            time.sleep(poll_s)


def job_logs(job_id: str, follow: bool = False, address: str | None = None, cluster: str | None = None,
             write: Callable[[str], Any] = sys.stdout.write) -> str | None:
    """The job's output so far; with follow, stream it through `write` until the job ends."""
    with job_client_for(job_id, address, cluster) as client:
        if not follow:
            return _call("logs of", job_id, lambda: client.get_job_logs(job_id))

        async def tail() -> None:
            async for chunk in client.tail_job_logs(job_id):
                write(chunk)

        try:
            _call("logs of", job_id, lambda: asyncio.run(tail()))
        except KeyboardInterrupt:  # stop following; the job itself keeps running
            write("\n(stopped following; the job keeps running)\n")
        return None


def stop_job(job_id: str, address: str | None = None, cluster: str | None = None,
             timeout_s: float = 60.0) -> str:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL) and wait until it has; return its status."""
    with job_client_for(job_id, address, cluster) as client:
        _call("stopping", job_id, lambda: client.stop_job(job_id))
        deadline = time.monotonic() + timeout_s
        while True:
            status = str(_call("status of", job_id, lambda: client.get_job_status(job_id)))
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(1.0)
