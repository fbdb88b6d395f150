"""`rsam-dist tensorboard`: gather a run's or a sweep's event files into one local directory.

    rsam-dist tensorboard runs/rsam-digits-g4-20260101-120000       # a local run or sweep
    rsam-dist tensorboard s3://bucket/rsam-runs/my-sweep            # any URI pyarrow reads
    rsam-dist tensorboard --job JOB_ID                              # a submitted job's outputs
    rsam-dist tensorboard ~/rsam-dist-runs/X --cluster cluster/aws-gpu.yaml   # the head's disk

Every `events.out.tfevents.*` file under the source is copied to the same relative path under
one local directory (default $RSAM_DIST_HOME/tensorboard/NAME), so a sweep's trials show as
separate runs; nothing else (checkpoints) is copied. From the head node the files come through
`ray rsync-down` (SSH). TensorBoard is then started on 127.0.0.1 only; `--no-launch` prints the
command instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rsam_dist.errors import UserError
from rsam_dist.jobs.dashboard import last_error_line, normalise_address, one_line, ray_executable
from rsam_dist.jobs.jobs import find_record, registry_path, rsam_home
from rsam_dist.runs import is_uri

EVENT_PREFIX = "events.out.tfevents."
DEFAULT_PORT = 6006
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Collected:
    logdir: Path
    files: list[Path]

    def command(self, port: int = DEFAULT_PORT) -> str:
        return f"tensorboard --logdir {self.logdir} --host 127.0.0.1 --port {port}"


def default_target(name: str) -> Path:
    return rsam_home() / "tensorboard" / (name.rstrip("/").rsplit("/", 1)[-1] or "run")


def collect_event_files(source: str, target: str | Path, cluster: str | None = None) -> Collected:
    """Copy every event file under `source` into `target`, keeping relative paths.

    `source` is a local directory, a URI (s3://, gs://, file://...), or with `cluster` a directory
    on that cluster's head node (fetched with `ray rsync-down`).
    """
    target = Path(target).expanduser().resolve()
    if cluster:
        files = _collect_from_head(cluster, source, target)
    elif is_uri(source):
        files = _collect_from_uri(source, target)
    else:
        directory = Path(source).expanduser()
        if not directory.is_dir():
            raise UserError(f"{source}: no such directory (a run or sweep directory, or a URI)")
        files = _copy_local(directory, target)
    if not files:
        raise UserError(f"{source}: no TensorBoard event files ({EVENT_PREFIX}*) under it yet; "
                        "has the run finished an epoch?")
    return Collected(target, files)


def _copy_local(directory: Path, target: Path) -> list[Path]:
    if directory.resolve() == target:  # already the one directory
        return sorted(p for p in target.rglob(f"{EVENT_PREFIX}*") if p.is_file())
    copied = []
    for event_file in sorted(directory.rglob(f"{EVENT_PREFIX}*")):
        if not event_file.is_file() or target in event_file.parents:
            continue
        destination = target / event_file.relative_to(directory)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(event_file, destination)
        copied.append(destination)
    return copied


def _collect_from_uri(uri: str, target: Path) -> list[Path]:
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri)
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as err:
        raise UserError(f"{uri}: cannot list it ({one_line(err, 160)})") from None
    copied = []
    for info in infos:
        if info.type != pyarrow.fs.FileType.File or not info.base_name.startswith(EVENT_PREFIX):
            continue
        destination = target / info.path[len(root):].lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as stream, open(destination, "wb") as out:
            shutil.copyfileobj(stream, out)
        copied.append(destination)
    return sorted(copied)


def _collect_from_head(cluster: str, remote_dir: str, target: Path) -> list[Path]:
    if not Path(cluster).is_file():
        raise UserError(f"{cluster}: no such cluster file")
    with tempfile.TemporaryDirectory(prefix="rsam-rsync-") as staging:
        # rsync reads a relative remote path from the login's home: "~/x" works without a remote shell.
        remote = remote_dir.removeprefix("~/").rstrip("/") + "/"
        command = [ray_executable(), "rsync-down", str(cluster), remote, staging + "/"]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            why = last_error_line(done.stdout + "\n" + done.stderr) or f"exit code {done.returncode}"
            raise UserError(f"cannot copy {remote_dir} from the head of {cluster} with `ray rsync-down`: "
                            f"{why}; is the cluster up (`ray up {cluster}`)?")
        return _copy_local(Path(staging), target)


def collect_for_job(job_id: str, target: str | Path | None = None, cluster: str | None = None) -> Collected:
    """The event files of a job that `rsam-dist submit` recorded."""
    record = find_record(job_id)
    if record is None:
        raise UserError(f"unknown job {job_id!r}: not in {registry_path()}; pass the run directory instead")
    target = target or default_target(job_id)
    cluster = cluster or record.cluster
    if is_uri(record.remote_dir):
        return collect_event_files(record.remote_dir, target)
    if cluster:
        return collect_event_files(record.remote_dir, target, cluster=cluster)
    if record.address and urlsplit(normalise_address(record.address)).hostname in LOOPBACK_HOSTS:
        # The head is this machine: its disk is ours.
        return collect_event_files(str(Path(record.remote_dir).expanduser()), target)
    raise UserError(f"job {job_id} ran at {record.address}, whose disk this machine cannot read: "
                    f"pass --cluster FILE (for `ray rsync-down`) or copy {record.remote_dir} here")


def launch_tensorboard(logdir: str | Path, port: int = DEFAULT_PORT) -> int:
    """Run TensorBoard on 127.0.0.1:`port` over `logdir` until interrupted; its exit code."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
               "--host", "127.0.0.1", "--port", str(port)]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
