"""Run directories: where a run's files live, and the formats of the files it owns.

    <train.storage>/<train.name>/       (a local directory or a URI such as s3://bucket/runs/name)
        config.yaml                 the resolved config (what --resume reads back)
        provenance.json             code version (git commit, dirty tree) and package versions
        metrics.jsonl               one JSON line per finished epoch (sweeps read it back)
        tensorboard/                rank 0's event files
        best/state.pt               the best epoch so far (by test top-1)
        checkpoint_*/state.pt       the last train.keep_checkpoints epochs (Ray's or ours)

A run is passed around as one `RunDir` value; nothing joins or splits its path by hand.
Checkpoints are loaded with `torch.load(weights_only=True)`: they hold tensors and plain Python
values only, so loading one never runs code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsam_dist.config import Config, load_config
from rsam_dist.errors import UserError

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.pt"
TENSORBOARD_DIR = "tensorboard"
BEST_DIR = "best"
LOCAL_CHECKPOINT_PREFIX = "checkpoint_epoch="


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class RunDir:
    """One run's location: `storage` (an absolute local directory or a URI) and its `name`."""

    storage: str
    name: str

    @classmethod
    def for_config(cls, config: Config) -> RunDir:
        """Where a new run of `config` goes: train.storage/train.name."""
        if not config.train.name:
            raise UserError("train.name is not set: give it with --set train.name=NAME")
        storage = config.train.storage
        if not is_uri(storage):
            storage = str(Path(storage).expanduser().resolve())
        return cls(storage.rstrip("/"), config.train.name)

    @classmethod
    def at(cls, path: str | Path) -> RunDir:
        """The run in directory `path` itself, wherever it now is (a copied or moved run stays put)."""
        text = str(path).rstrip("/")
        if not is_uri(text):
            text = str(Path(text).expanduser().resolve())
        storage, _, name = text.rpartition("/")
        return cls(storage or "/", name)

    @property
    def path(self) -> str:
        return f"{self.storage}/{self.name}"

    @property
    def local(self) -> Path | None:
        """The directory on this machine, or None for a URI."""
        return None if is_uri(self.storage) else Path(self.path)

    def file(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    @property
    def tensorboard(self) -> str:
        """Where the run's event files go: its tensorboard/ folder, on a local disk or the URI's
        storage (TensorBoardLogger stages them locally and uploads them after each epoch)."""
        return self.file(TENSORBOARD_DIR)

    def __str__(self) -> str:
        return self.path


def with_run_name(config: Config) -> Config:
    """`config` with train.name filled in (timestamped) when the user left it unset."""
    if config.train.name:
        return config
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"rsam-{config.data.name}-g{config.model.glimpses}-{stamp}"
    return config.model_copy(update={"train": config.train.model_copy(update={"name": name})})


def with_run_dir(config: Config, run: RunDir) -> Config:
    """`config` whose train.storage/train.name are `run`'s (so config.yaml says where it lives)."""
    train = config.train.model_copy(update={"storage": run.storage, "name": run.name})
    return config.model_copy(update={"train": train})


# --- config.yaml and provenance.json -------------------------------------------------------------


def save_run_config(run: RunDir, config: Config) -> None:
    write_bytes(run.file(CONFIG_FILE), config.to_yaml().encode())
    write_bytes(run.file(PROVENANCE_FILE), (json.dumps(provenance(), indent=2) + "\n").encode())


def load_run_config(run: RunDir, overrides: tuple[str, ...] = ()) -> Config:
    """The config the run in `run` was started with, for --resume, placed where the run now is."""
    directory = run.local
    if directory is None or not (directory / CONFIG_FILE).is_file():
        raise UserError(f"{run}: not a run directory (no {CONFIG_FILE}); pass the directory a run printed")
    return with_run_dir(load_config(directory / CONFIG_FILE, overrides), run)


def provenance() -> dict[str, Any]:
    """What made a run: the code version and the versions of the packages that shape its result."""
    from importlib import metadata

    versions = {}
    for package in ("rsam-dist", "torch", "torchvision", "ray", "optuna", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"code": code_version(), "packages": versions}


def code_version() -> dict[str, Any]:
    """The git commit of the package's checkout and whether its tree had changes (None outside git)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


# --- metrics.jsonl -------------------------------------------------------------------------------


def append_metrics(run: RunDir, metrics: dict[str, float]) -> None:
    """One JSON line per epoch: the run's own record, which sweeps read back whatever Tune kept of
    an interrupted and restored trial.

    On a local disk: one write of one whole line, flushed and synced, so a crash leaves at most a
    torn last line, which `read_metrics` skips; the next line starts on a line of its own. On a
    URI (object stores cannot append): the file is read, extended and written back whole, by rank 0,
    its only writer.
    """
    line = (json.dumps(metrics) + "\n").encode()
    directory = run.local
    if directory is None:
        before = read_bytes(run.file(METRICS_FILE)) or b""
        if before and not before.endswith(b"\n"):
            before += b"\n"
        write_bytes(run.file(METRICS_FILE), before + line)
        return
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / METRICS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            line = b"\n" + line  # after a torn line: never glue this epoch onto it
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_metrics(run: RunDir | str | Path) -> list[dict[str, float]]:
    """Every epoch's metrics, one per epoch (the last report of a redone epoch). Lines that are not
    a whole epoch record (torn by a crash, blank, edited into non-numbers) are skipped."""
    if isinstance(run, RunDir) and run.local is None:
        payload = read_bytes(run.file(METRICS_FILE))
    else:
        path = (run.local if isinstance(run, RunDir) else Path(run)) / METRICS_FILE
        payload = path.read_bytes() if path.is_file() else None
    if not payload:
        return []
    by_epoch = {}
    for line in payload.decode(errors="replace").splitlines():
        try:
            metrics = json.loads(line)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
            if numbers:
                by_epoch[int(metrics["epoch"])] = metrics
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


# --- state files (local paths or URIs, through pyarrow's filesystems as Ray's storage is) -----


def read_bytes(source: str) -> bytes | None:
    """The bytes of the file `source` (a local path or a URI), or None when there is none."""
    if not is_uri(source):
        path = Path(source)
        return path.read_bytes() if path.is_file() else None
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(source)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.readall()


def write_bytes(target: str, payload: bytes) -> None:
    """Write `payload` to `target` whole or not at all (a crash never leaves half a file)."""
    if is_uri(target):
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(target)
        if isinstance(filesystem, pyarrow.fs.LocalFileSystem):  # file://: the local disk, atomically
            write_bytes(path, payload)
            return
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:  # object stores commit on close
            stream.write(payload)
        return
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name in the same directory: concurrent writers never share one, and the
    # rename is atomic. fsync before the rename so a power cut cannot leave an empty file.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_state(target: str, state: dict[str, Any]) -> None:
    import torch  # here, not at the top: commands that only read configs and metrics start without it

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(target, buffer.getvalue())


class BadCheckpoint(Exception):
    """A checkpoint file that cannot be used: corrupt, truncated, empty, unsafe or of the wrong shape."""


REQUIRED_STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "best_top1", "rng")


def load_state(source: str | Path) -> dict[str, Any]:
    """A checkpoint's state dict, loaded without running code; BadCheckpoint names what is wrong."""
    import torch

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            reason = "it holds Python objects other than tensors and plain values (refused: loading could run code)"
        raise BadCheckpoint(f"{source}: unreadable checkpoint ({reason})") from None
    missing = [key for key in REQUIRED_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise BadCheckpoint(f"{source}: not an rsam-dist checkpoint (missing {', '.join(missing)})")
    return state


# --- local (non-Ray) checkpoints ------------------------------------------------------------


def local_checkpoint_dir(directory: Path, epoch: int) -> Path:
    return directory / f"{LOCAL_CHECKPOINT_PREFIX}{epoch:04d}"


def save_local_checkpoint(directory: Path, state: dict[str, Any], keep: int) -> Path:
    """Write epoch `state['epoch']`'s checkpoint and delete all but the newest `keep`."""
    target = local_checkpoint_dir(directory, state["epoch"])
    save_state(str(target / STATE_FILE), state)
    for old in local_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(path.name.removeprefix(LOCAL_CHECKPOINT_PREFIX))
    except ValueError:
        return -1


def local_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, oldest first, ordered by epoch number (not as strings)."""
    found = [p for p in directory.glob(f"{LOCAL_CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted((p for p in found if _checkpoint_epoch(p) >= 0), key=_checkpoint_epoch)


def check_state_shapes(state: dict[str, Any], shapes: dict[str, tuple[int, ...]], source: str | Path) -> None:
    """BadCheckpoint unless the state's model holds exactly the tensors (names, shapes) `shapes` lists."""
    model = state.get("model")
    saved = {name: tuple(value.shape) for name, value in model.items()} if isinstance(model, dict) else {}
    if saved != shapes:
        different = sorted(set(saved) ^ set(shapes)) or [n for n in shapes if saved.get(n) != shapes[n]]
        raise BadCheckpoint(f"{source}: its model does not fit this config (differs at {different[0]})")


def warn_skipped(err: Exception) -> None:
    print(f"rsam-dist: warning: skipping {err}; trying an older checkpoint", file=sys.stderr, flush=True)


def newest_valid_state(
    candidates: list[Path], run: RunDir | str, shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, Any] | None:
    """The newest usable state of `candidates` (oldest first); each bad one is named in one line.

    `shapes` (the model's tensor shapes) also rejects a checkpoint of another model. Raises a
    UserError when there were checkpoints but none of them is usable.
    """
    for path in reversed(candidates):
        try:
            state = load_state(path)
            if shapes is not None:
                check_state_shapes(state, shapes, path)
            return state
        except BadCheckpoint as err:
            warn_skipped(err)
    if candidates:
        raise UserError(f"{run}: no usable checkpoint ({len(candidates)} found, all unreadable); "
                        "start a new run with another train.name")
    return None


def latest_local_state(directory: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any] | None:
    return newest_valid_state([p / STATE_FILE for p in local_checkpoints(directory)], str(directory), shapes)
