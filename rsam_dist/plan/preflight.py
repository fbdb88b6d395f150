"""Pre-flight checks: what would make a sweep fail after it has started, found before anything is spent.

Each check returns what it found, or raises a one-line UserError (the CLI exits 2):
- the trial shape fits a node (CPUs, GPUs, a GPU current PyTorch can use, a trial-driver slot)
  and the data fills at least one batch;
- the dataset is reachable, or downloadable, from where the trials run;
- the storage is writable (a local path, or a URI through pyarrow as Ray writes it), and does not
  already hold a sweep of that name.
The cluster file itself is validated when the plan reads it (`targets.cluster_target`).
What cannot be seen from this machine (a path on the cluster's head) is said to be unchecked.

    from rsam_dist.plan.preflight import check_storage
    check_storage("runs", where_trials_run_is_local=True)
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from rsam_dist.config import Config
from rsam_dist.errors import UserError
from rsam_dist.plan.estimate import DatasetSize
from rsam_dist.plan.targets import Target
from rsam_dist.plan.trials import TrialShape
from rsam_dist.ray_cluster import TRIAL_DRIVER_RESOURCE
from rsam_dist.runs import is_uri

MIN_COMPUTE_CAPABILITY = (7, 5)
"""The oldest GPUs the pinned PyTorch (CUDA 13 wheels) has kernels for (see rsam_dist.gpu_check)."""
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
REACH_TIMEOUT_S = 8.0
STORAGE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Check:
    name: str
    detail: str
    checked: bool = True
    """False: could not be checked from this machine (said so, not failed)."""


# --- the trial's shape --------------------------------------------------------------------------------


def check_shape(target: Target, shape: TrialShape, sweep: bool) -> Check:
    """One trial's workers fit the target's nodes, on GPUs it can use, with a driver slot for sweeps."""
    if sweep and not any(node.custom.get(TRIAL_DRIVER_RESOURCE) for node in target.nodes):
        raise UserError(f"{target.label}: no node offers the '{TRIAL_DRIVER_RESOURCE}' resource that sweep trial "
                        f"drivers need: give the head resources: {{\"{TRIAL_DRIVER_RESOURCE}\": 4}} "
                        "(as cluster/*.yaml do)")
    known = [node for node in target.nodes if node.cpus is not None and node.gpus is not None]
    if not known:
        return Check("trial shape", f"{shape.describe()}: the nodes' sizes are not known from here", checked=False)
    fitting = [node for node in known if node.cpus >= shape.cpus_per_worker
               and node.gpus >= shape.gpus_per_worker]
    if not fitting:
        largest = max(known, key=lambda node: (node.gpus, node.cpus))
        raise UserError(f"a trial worker needs {shape.cpus_per_worker:g} CPUs and {shape.gpus_per_worker:g} GPUs, "
                        f"but the largest node of {target.label} has {largest.cpus:g} CPUs and {largest.gpus:g} GPUs: "
                        "lower trial.cpus_per_worker/gpus_per_worker (scaling.* for a training config) or use "
                        "bigger nodes")
    if shape.gpus_per_worker:
        old = [node for node in fitting if node.compute_capability
               and _capability(node.compute_capability) < MIN_COMPUTE_CAPABILITY]
        if old and len(old) == len(fitting):
            node = old[0]
            raise UserError(f"{node.instance or node.name}'s {node.gpu} has compute capability "
                            f"{node.compute_capability}, below the {'.'.join(map(str, MIN_COMPUTE_CAPABILITY))} "
                            "current PyTorch needs: no trial could use it; use cluster/aws-gpu.yaml")
    total = sum(int(min(node.cpus // shape.cpus_per_worker,
                        node.gpus // shape.gpus_per_worker if shape.gpus_per_worker else float("inf")))
                * node.max_count for node in fitting)
    if total < shape.num_workers:
        raise UserError(f"a trial needs {shape.num_workers} workers of {shape.cpus_per_worker:g} CPUs"
                        f"{f' and {shape.gpus_per_worker:g} GPUs' if shape.gpus_per_worker else ''}, but "
                        f"{target.label} holds {total} at most: lower the workers or use more nodes")
    return Check("trial shape", f"{shape.describe()} fits ({total} such workers fit at most)")


def check_batches(config: Config, size: DatasetSize) -> None:
    if size.train < config.optim.batch_size:
        raise UserError(f"{config.data.name} has {size.train} training images here, fewer than one batch of "
                        f"{config.optim.batch_size}: raise data.limit_train or lower optim.batch_size")


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


# --- the dataset --------------------------------------------------------------------------------------


def check_dataset(config: Config, target: Target) -> Check:
    data = config.data
    if data.name != "cifar10":
        return Check("dataset", f"{data.name}: built in, needs no download")
    root = Path(data.root).expanduser()
    if not target.is_local:
        return _remote_cifar(config, target)
    folder = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if not missing:
        return Check("dataset", f"CIFAR-10 found in {folder}")
    from rsam_dist.data import CIFAR10_URL

    why = f"{', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''} missing"
    if not data.download:
        raise UserError(f"CIFAR-10 is not in {folder} ({why}) and data.download is false: extract "
                        f"{CIFAR10_URL} into {root} or set data.download=true")
    writable_dir(root, "data.root (CIFAR-10 is downloaded there)")
    reached = _reachable(CIFAR10_URL)
    if reached is not True:
        raise UserError(f"CIFAR-10 is not in {folder} ({why}) and cannot be downloaded from here ({reached}): "
                        f"extract {CIFAR10_URL} into {root}, or set data.root to a folder that holds "
                        "cifar-10-batches-py")
    return Check("dataset", f"CIFAR-10 is not in {folder} yet; the first trial downloads it ({CIFAR10_URL} "
                            "answers from here)")


def _remote_cifar(config: Config, target: Target) -> Check:
    data = config.data
    root = Path(data.root)
    synced = not root.is_absolute() and not root.parts[0].startswith("~") and not _excluded(root, target)
    if synced and target.kind == "cluster":
        return Check("dataset", f"{data.root} is copied to the nodes with the project", checked=False)
    if not data.download:
        where = "is not copied to the nodes (rsync_exclude)" if target.kind == "cluster" and not root.is_absolute() \
            else "must already hold CIFAR-10 on every node"
        if target.kind == "cluster" and not root.is_absolute():
            raise UserError(f"data.download is false but {data.root} {where} in {target.source}: set "
                            "data.download=true (each node downloads CIFAR-10 once) or point data.root at a "
                            "path every node has")
        return Check("dataset", f"data.root {data.root} {where} (not checked from here)", checked=False)
    return Check("dataset", f"each node downloads CIFAR-10 into {data.root} at first use (needs the nodes' "
                            "internet access; not checked from here)", checked=False)


def _excluded(root: Path, target: Target) -> bool:
    first = root.parts[0] if root.parts else ""
    return any(pattern.strip("/") in (first, str(root)) for pattern in target.rsync_exclude)


def _reachable(url: str) -> bool | str:
    """True if `url` answers a HEAD request within REACH_TIMEOUT_S, else why not (one phrase)."""
    import urllib.error
    import urllib.request

    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=REACH_TIMEOUT_S) as response:  # noqa: S310 - a fixed https URL
            return True if response.status < 400 else f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"{type(reason).__name__ if not isinstance(reason, str) else reason}: no connection"


# --- the storage ----------------------------------------------------------------------------------------


def check_storage(storage: str, target: Target, what: str, existing: Path | None = None) -> Check:
    """`storage` (a local path or a URI) takes new files from where they are written.

    `existing`: a file whose presence means the name is taken (a sweep's sweep.yaml)."""
    if is_uri(storage):
        return _check_uri(storage, what, target)
    if not target.is_local:
        return Check("storage", f"{what} {storage} is on the cluster's head (not checked from here)", checked=False)
    path = Path(storage).expanduser()
    if existing is not None and existing.exists():
        raise UserError(f"{existing.parent} already holds a sweep: add --resume to continue it, or set another "
                        "name (--set name=...)")
    writable_dir(path, what)
    return Check("storage", f"{what} {path.resolve()} is writable")


def writable_dir(path: Path, what: str) -> None:
    """`path`, or the nearest folder above it that exists, takes a new file (tried, then removed)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, not a folder: point it elsewhere")
    try:
        handle, name = tempfile.mkstemp(prefix=".rsam-dist-plan-", dir=probe)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise UserError(f"{what} {path} is not writable ({probe}: {err.strerror or type(err).__name__}): fix its "
                        "permissions or point it elsewhere") from None


def _check_uri(uri: str, what: str, target: Target) -> Check:
    """Write and delete a marker file through pyarrow, as Ray's storage does, within a time limit."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            import pyarrow.fs

            filesystem, path = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
            marker = f"{path}/.rsam-dist-plan-{uuid.uuid4().hex[:12]}"
            filesystem.create_dir(path, recursive=True)
            with filesystem.open_output_stream(marker) as stream:
                stream.write(b"rsam-dist plan: storage check\n")
            filesystem.delete_file(marker)
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - every pyarrow/filesystem failure is "not writable"
            outcome.append(" ".join(f"{type(err).__name__}: {err}".split())[:200])

    worker = threading.Thread(target=attempt, daemon=True)  # a hanging object store must not hang the plan
    worker.start()
    worker.join(STORAGE_TIMEOUT_S)
    if not outcome:
        raise UserError(f"{what} {uri}: no answer within {STORAGE_TIMEOUT_S:.0f} s: check the URI and credentials")
    if outcome[0] is not None:
        raise UserError(f"{what} {uri} is not writable from here ({outcome[0]}): check the URI and credentials")
    where = "" if target.is_local else " (from this machine, with its credentials; the nodes use theirs)"
    return Check("storage", f"{what} {uri} is writable{where}")
