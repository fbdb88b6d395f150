"""Ray Jobs for `rsam-dist submit|status|logs|stop`: run train or sweep on a running cluster.

    rsam-dist submit train configs/digits.yaml --cluster cluster/aws-gpu.yaml   # prints JOB_ID
    rsam-dist submit sweep sweeps/demo.yaml --address http://127.0.0.1:8265
    rsam-dist status JOB_ID ; rsam-dist logs JOB_ID --follow ; rsam-dist stop JOB_ID

How a job runs. The project's code and config files (rsam_dist/, configs/, sweeps/,
pyproject.toml, requirements.lock: rsam_dist.jobs.upload, never hidden files or anything named
like a key or credentials) are uploaded as the job's working directory, so the code you submit is
the code that runs, on the driver and on every Ray worker. The entrypoint is
`python -m rsam_dist.cli train|sweep FILE --set ...`, started on the head node from the directory

    ~/rsam-dist-runs/JOB_ID/            (on the head; REMOTE_RUNS below)

so everything the run writes to a relative path (train.storage and a sweep's storage both
default to "runs") lands there, in one place per job, where `rsam-dist tensorboard --job JOB_ID`
finds it (through `ray rsync-down` for a --cluster job). An absolute or s3:// train.storage is
used as given. Train jobs read CIFAR-10 from ~/rsam-dist-data on each node unless data.root is
set, so a node downloads it once, not once per job.

Each submitted job is recorded in $RSAM_DIST_HOME/jobs.json (default ~/.rsam-dist/jobs.json), so
later commands need only its id; rsam_dist.jobs.dashboard reaches the cluster (--address URL or
--cluster FILE).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, TypeAdapter

from rsam_dist.config import load_config
from rsam_dist.errors import UserError
from rsam_dist.jobs.cluster_file import has_worker_nodes, validate_cluster_file
from rsam_dist.jobs.dashboard import (
    check_cluster_options,
    dashboard_timeout_s,
    dashboard_url,
    is_timeout,
    job_client,
    one_line,
    poll,
    quiet_ray_logs,
    safe_address,
)
from rsam_dist.jobs.upload import staged_project, why_not_shipped

REMOTE_RUNS = "~/rsam-dist-runs"
"""Per-job directories on the head node (expanded by the head's shell); $RSAM_DIST_REMOTE_RUNS
overrides it (the tests point it at a temporary directory)."""
REMOTE_DATA = "~/rsam-dist-data"
"""data.root for train jobs that leave it relative: one CIFAR-10 copy per node."""
JobKind = Literal["train", "sweep"]
"""The rsam-dist command a job runs."""
FINISHED_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
"""Ray's job statuses after which nothing changes any more."""
STOP_TIMEOUT_S = 60.0
FOLLOW_CHECK_S = 30.0
"""`logs --follow`: seconds of silence after which the dashboard and the job's status are checked."""
REGISTRY_LOCK_TIMEOUT_S = 30.0
"""How long a submit waits for another one's registry update (a few milliseconds each)."""


# --- the job registry ($RSAM_DIST_HOME/jobs.json) ----------------------------------------------


class JobRecord(BaseModel):
    """One submitted job as the registry keeps it (keys written by other versions are ignored)."""

    job_id: str
    kind: JobKind
    file: str
    """The config or sweep file, relative to the project root (as the job saw it)."""
    remote_dir: str
    """Where the job's outputs are: a path on the head node (may start with ~) or a URI."""
    address: str | None = None
    """The dashboard URL given with --address (None for --cluster jobs)."""
    cluster: str | None = None
    """The absolute path of the cluster file given with --cluster."""
    overrides: list[str] = []
    """Every --set the job runs with, the ones submit added included."""
    submitted: str = ""
    """Local time of submission, YYYY-MM-DD HH:MM:SS."""

    def where(self) -> str:
        return self.cluster or self.address or "?"


_RECORDS = TypeAdapter(dict[str, JobRecord])
"""The registry's "jobs" object: job id -> record."""


def rsam_home() -> Path:
    return Path(os.environ.get("RSAM_DIST_HOME") or "~/.rsam-dist").expanduser()


def registry_path() -> Path:
    return rsam_home() / "jobs.json"


def load_registry() -> dict[str, JobRecord]:
    path = registry_path()
    if not path.is_file():
        return {}
    try:
        return _RECORDS.validate_python(json.loads(path.read_text()).get("jobs", {}))
    except (OSError, ValueError, AttributeError) as err:  # ValueError: bad JSON, pydantic's ValidationError
        raise UserError(f"{path}: unreadable job registry ({one_line(err, 200)}); fix or delete it") from None


def save_record(record: JobRecord) -> None:
    """Add `record` to the registry: read, change and write under a lock, so two submits at once
    both keep their record (the write itself is atomic)."""
    from filelock import FileLock, Timeout

    from rsam_dist.runs import write_bytes  # runs imports torch: only `submit` pays for it

    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock", timeout=REGISTRY_LOCK_TIMEOUT_S):
            records = load_registry()
            records[record.job_id] = record
            document = {"jobs": _RECORDS.dump_python(records, mode="json")}
            write_bytes(str(path), (json.dumps(document, indent=2) + "\n").encode())
    except Timeout:
        raise UserError(f"{path}.lock: another rsam-dist has held the job registry for "
                        f"{REGISTRY_LOCK_TIMEOUT_S:.0f} s; job {record.job_id} was submitted but not "
                        "recorded: pass --address/--cluster to reach it") from None


def find_record(job_id: str) -> JobRecord | None:
    return load_registry().get(job_id)


def list_jobs() -> str:
    """The recorded jobs, newest last (no cluster is contacted)."""
    records = sorted(load_registry().values(), key=lambda r: r.submitted)
    if not records:
        return f"no jobs submitted from this machine yet ({registry_path()})"
    return "\n".join(f"{r.job_id}  {r.kind:<5}  {r.file}  on {r.where()}  ({r.submitted})" for r in records)


# --- the client for a job ------------------------------------------------------------------------


@contextmanager
def job_client_for(job_id: str | None, address: str | None, cluster: str | None) -> Iterator[Any]:
    """The client for a job: the --address/--cluster given, else where the registry says it runs."""
    if not (address or cluster):
        record = find_record(job_id) if job_id else None
        if record is None:
            raise UserError(f"unknown job {job_id!r}: it is not in {registry_path()}; "
                            "pass --address URL or --cluster FILE")
        address, cluster = record.address, record.cluster
        origin = f"job {job_id}'s recorded address"
    else:
        origin = "--address"
    with dashboard_url(address, cluster, origin) as url, quiet_ray_logs():
        yield job_client(url)


def call_job_client(what: str, job_id: str, function: Callable[[], Any]) -> Any:
    """Run a job-client call; Ray's 'job does not exist' and HTTP errors become one-line UserErrors."""
    try:
        return function()
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if "does not exist" in text or "404" in text:
            raise UserError(f"job {job_id} does not exist on that cluster") from None
        raise UserError(f"{what} {job_id}: {one_line(text, 200)}") from None
    except OSError as err:  # ConnectionError, requests' and aiohttp's connection errors and timeouts
        if is_timeout(err):
            raise UserError(f"{what} {job_id}: the Ray dashboard did not answer within {dashboard_timeout_s():g} s; "
                            "check that the cluster's head is healthy") from None
        raise UserError(f"{what} {job_id}: lost the Ray dashboard ({one_line(err, 160)})") from None


def wait_for_status(client: Any, job_id: str, until: set[str] | frozenset[str], timeout_s: float) -> str:
    """Poll the job's status until it is in `until` or `timeout_s` has passed; that status."""
    return poll(lambda: str(call_job_client("status of", job_id, lambda: client.get_job_status(job_id))),
                lambda status: status in until, timeout_s)


# --- submit --------------------------------------------------------------------------------------


def project_root() -> Path:
    """The checkout rsam_dist is imported from (the directory holding pyproject.toml)."""
    root = Path(__file__).resolve().parents[2]  # <root>/rsam_dist/jobs/jobs.py
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
    from rsam_dist.gpu_check import declared_cluster_gpus

    if kind not in get_args(JobKind):
        raise UserError(f"unknown job kind {kind!r}: use one of {', '.join(get_args(JobKind))}")
    cluster_config, cluster_gpus = None, None
    if cluster:
        cluster_config = validate_cluster_file(cluster)
        cluster_gpus = declared_cluster_gpus(cluster_config)
    root = project_root()
    path = Path(file).resolve()
    if not path.is_file():
        raise UserError(f"{file}: no such file")
    why_not = why_not_shipped(root, path)
    if why_not:
        raise UserError(f"{file}: the job would not receive it ({why_not}); put the file in configs/ or "
                        "sweeps/") from None
    relative = path.relative_to(root).as_posix()
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
    from rsam_dist.gpu_check import settle_gpus
    from rsam_dist.runs import is_uri  # runs imports torch: only `submit` pays for it

    config = load_config(path, overrides)  # a bad file or --set fails here, not on the cluster
    settle_gpus(config.scaling.gpus_per_worker, cluster_gpus, cluster, "scaling.gpus_per_worker")
    extra = _data_root_override(config.data.root, overrides)
    storage = config.train.storage
    if is_uri(storage) or _is_absolute_or_home(storage):
        name = config.train.name
        if not name:
            name = Path(job_dir).name
            extra.append(f"train.name={name}")
        return overrides + extra, f"{storage.rstrip('/')}/{name}"
    return overrides + extra, job_dir  # relative storage: under the job directory


def _plan_sweep(path: Path, overrides: list[str], job_dir: str, cluster: str | None,
                cluster_gpus: float | None) -> tuple[list[str], str]:
    from rsam_dist.gpu_check import settle_gpus
    from rsam_dist.sweep.config import load_sweep  # the sweep package loads Ray Tune

    sweep = load_sweep(path, overrides)  # a bad sweep file or --set fails here
    if isinstance(sweep.spec.base, str):  # a base: file must travel with the job too
        base = (path.parent / sweep.spec.base).resolve()
        why_not = why_not_shipped(project_root(), base)
        if why_not:
            raise UserError(f"{path}: base: {one_line(sweep.spec.base, 100)} would not reach the job "
                            f"({why_not}); put it in configs/")
    extra = _data_root_override(sweep.base.data.root, overrides)
    requested = sweep.spec.trial.gpus_per_worker
    if settle_gpus(requested, cluster_gpus, cluster, "trial.gpus_per_worker") != requested:
        extra.append("trial.gpus_per_worker=0")  # auto on a cluster without GPUs: CPU trials
    storage = sweep.spec.storage
    if _is_absolute_or_home(storage):
        return overrides + extra, f"{storage.rstrip('/')}/{sweep.spec.name}"
    return overrides + extra, job_dir


def _data_root_override(root: str, overrides: list[str]) -> list[str]:
    """data.root=~/rsam-dist-data unless the user set it or it is absolute: one CIFAR-10 per node."""
    given = {text.partition("=")[0].strip() for text in overrides}
    return [] if "data.root" in given or _is_absolute_or_home(root) else [f"data.root={REMOTE_DATA}"]


def remote_runs() -> str:
    runs = os.environ.get("RSAM_DIST_REMOTE_RUNS") or REMOTE_RUNS
    # It goes into the job's shell command unquoted (so that ~ expands): letters, digits and
    # . _ - / only, never a shell metacharacter.
    if not _is_absolute_or_home(runs) or not re.fullmatch(r"~?[A-Za-z0-9._/-]+", runs):
        raise UserError(f"RSAM_DIST_REMOTE_RUNS={one_line(repr(runs), 100)}: must be an absolute (or ~/) path "
                        "of letters, digits and . _ - / only")
    return runs.rstrip("/")


def _workers_mount_runs(config: dict[str, Any]) -> bool:
    """Workers mount the head's runs directory (cluster/aws-g2.yaml, over NFS): one place already."""
    return any("mount" in command and Path(REMOTE_RUNS).name in command
               for command in config.get("worker_setup_commands") or [])


def _is_absolute_or_home(path: str) -> bool:
    """Whether the head's shell resolves `path` without the job directory: /... or ~/..."""
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
    from rsam_dist.runs import is_uri  # runs imports torch: only `submit` pays for it

    check_cluster_options(address, cluster)  # before any file is read or note printed
    job_id = new_job_id(kind)
    plan = plan_job(kind, file, overrides, job_id, cluster)
    cluster_path = str(Path(cluster).resolve()) if cluster else None
    prepared = plan.cluster_config
    if prepared and notify and not is_uri(plan.remote_dir):
        if has_worker_nodes(prepared) and not _workers_mount_runs(prepared):
            notify(f"note: outputs go to {plan.remote_dir} on the head; Train workers on other nodes "
                   "keep theirs on their own disks: for checkpoints, --resume and TensorBoard in one "
                   "place add --set train.storage=s3://BUCKET/PATH (see the cluster file's header)")
    with dashboard_url(address, cluster) as url, quiet_ray_logs(), staged_project(project_root()) as shipped:
        client = job_client(url)
        runtime_env = {
            "working_dir": str(shipped),  # Ray packs and uploads it inside submit_job
            "env_vars": {"RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"},
        }
        submitted = call_job_client("submitting", job_id, lambda: client.submit_job(
            entrypoint=plan.entrypoint,
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata={"rsam_kind": kind, "rsam_file": plan.file},
        ))
    save_record(JobRecord(
        job_id=submitted, kind=kind, file=plan.file, remote_dir=plan.remote_dir,
        address=safe_address(address) if address else None, cluster=cluster_path,
        overrides=plan.overrides, submitted=time.strftime("%Y-%m-%d %H:%M:%S"),
    ))
    return submitted


# --- status, logs, stop --------------------------------------------------------------------------


def job_status(job_id: str, address: str | None = None, cluster: str | None = None) -> tuple[str, str]:
    """(status, message): PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED, and Ray's note on it."""
    with job_client_for(job_id, address, cluster) as client:
        info = call_job_client("status of", job_id, lambda: client.get_job_info(job_id))
    return str(info.status), (info.message or "").strip()


def describe_status(job_id: str, address: str | None = None, cluster: str | None = None) -> str:
    status, message = job_status(job_id, address, cluster)
    line = f"{job_id}  {status}"
    if status in {"FAILED", "STOPPED"} and message:
        # A failed entrypoint's message ends with its last output; our one-line error is the news.
        ours = [text for text in message.splitlines() if text.startswith("rsam-dist: ")]
        line += f"  ({ours[-1] if ours else ' '.join(message.split())[:200]})"
    return line


def job_logs(job_id: str, follow: bool = False, address: str | None = None, cluster: str | None = None,
             write: Callable[[str], Any] = sys.stdout.write) -> str | None:
    """The job's output so far; with follow, stream it through `write` until the job ends."""
    with job_client_for(job_id, address, cluster) as client:
        if not follow:
            return call_job_client("logs of", job_id, lambda: client.get_job_logs(job_id))
        # Ray's log stream (a websocket) has no timeout: ask for the status first, so a dashboard
        # that does not answer fails in dashboard_timeout_s(), and again whenever the stream is quiet.
        call_job_client("status of", job_id, lambda: client.get_job_status(job_id))
        try:
            call_job_client("logs of", job_id, lambda: asyncio.run(_follow(client, job_id, write)))
        except KeyboardInterrupt:  # stop following; the job itself keeps running
            write("\n(stopped following; the job keeps running)\n")
        return None


async def _follow(client: Any, job_id: str, write: Callable[[str], Any]) -> None:
    """Stream the job's output through `write` until it ends; every FOLLOW_CHECK_S of silence,
    check that the dashboard still answers (a timed request) and that the job still runs."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    streaming = asyncio.ensure_future(tail())
    finished_checks = 0
    try:
        while True:
            done, _ = await asyncio.wait({streaming}, timeout=FOLLOW_CHECK_S)
            if done:
                return streaming.result()
            status = str(await asyncio.to_thread(client.get_job_status, job_id))
            finished_checks = finished_checks + 1 if status in FINISHED_STATUSES else 0
            if finished_checks >= 2:  # ended, yet the stream never closed
                return None
    finally:
        streaming.cancel()


def stop_job(job_id: str, address: str | None = None, cluster: str | None = None,
             timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL) and wait until it has; return its status."""
    with job_client_for(job_id, address, cluster) as client:
        call_job_client("stopping", job_id, lambda: client.stop_job(job_id))
        return wait_for_status(client, job_id, FINISHED_STATUSES, timeout_s)
