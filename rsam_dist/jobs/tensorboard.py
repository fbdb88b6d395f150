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

What a source says is not trusted to pick local paths: an object key that would land outside
the target (`../`) is refused, symlinks are not followed, and a head-node path must be plain
(letters, digits, . _ - /), since rsync before 3.2.4 passes it through the remote shell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from rsam_dist.errors import UserError
from rsam_dist.jobs.dashboard import is_loopback, last_error_line, normalise_address, one_line, ray_executable
from rsam_dist.jobs.jobs import find_record, registry_path, rsam_home
from rsam_dist.runs import is_uri

EVENT_PREFIX = "events.out.tfevents."
DEFAULT_PORT = 6006
_PLAIN_REMOTE_PATH = re.compile(r"(~/|/)?[A-Za-z0-9._][A-Za-z0-9._/-]*")
"""A head-node path that no shell splits or expands: letters, digits, . _ - /, after ~/ or /."""


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
        # A symlink (say, one that rsync brought from the head) would copy whatever it points at.
        if event_file.is_symlink() or not event_file.is_file() or target in event_file.parents:
            continue
        destination = target / event_file.relative_to(directory)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(event_file, destination)
        copied.append(destination)
    return copied


def open_uri(uri: str):
    """(pyarrow filesystem, root path) for a URI: s3://, gs://, file://... (what Ray's storage reads)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def _collect_from_uri(uri: str, target: Path) -> list[Path]:
    import pyarrow.fs

    try:
        filesystem, root = open_uri(uri)
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as err:
        raise UserError(f"{uri}: cannot list it ({one_line(err, 160)})") from None
    copied = []
    for info in infos:
        if info.type != pyarrow.fs.FileType.File or not info.base_name.startswith(EVENT_PREFIX):
            continue
        destination = _inside(target, info.path, root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(info.path) as stream, open(destination, "wb") as out:
            shutil.copyfileobj(stream, out)
        copied.append(destination)
    return sorted(copied)


def _inside(target: Path, key: str, root: str) -> Path:
    """Where object `key` (listed under `root`) goes in `target`; a key that would leave it is refused."""
    relative = PurePosixPath(key[len(root):].lstrip("/")) if key.startswith(root) else None
    if relative is None or relative.is_absolute() or any(part in ("..", ".") for part in relative.parts) \
            or not relative.parts:
        raise UserError(f"object {one_line(key, 100)!r} would land outside {target}: refused (keys with ../ "
                        "come from a broken or hostile bucket); nothing is written outside the target")
    destination = target.joinpath(*relative.parts)
    if not destination.resolve().is_relative_to(target):  # through a symlink already in the target
        raise UserError(f"{destination}: leads outside {target} (a symlink?): refused; use an empty --out")
    return destination


def _collect_from_head(cluster: str, remote_dir: str, target: Path) -> list[Path]:
    if not Path(cluster).is_file():
        raise UserError(f"{cluster}: no such cluster file")
    if not _PLAIN_REMOTE_PATH.fullmatch(remote_dir):
        raise UserError(f"{one_line(remote_dir, 100)!r}: a head-node directory may hold only letters, digits "
                        "and . _ - / (after ~/ or /), as rsync hands it to the remote shell; rename it on the head")
    with tempfile.TemporaryDirectory(prefix="rsam-rsync-") as staging:
        # rsync reads a relative remote path from the login's home: "~/x" works without a remote shell.
        remote = remote_dir.removeprefix("~/").rstrip("/") + "/"
        # `--`: a path that starts with "-" is never an option of `ray rsync-down`.
        command = [ray_executable(), "rsync-down", "--", str(cluster), remote, staging + "/"]
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
    if record.address and is_loopback(urlsplit(normalise_address(record.address)).hostname):
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
