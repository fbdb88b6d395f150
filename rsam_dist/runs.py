"""Run directories: where a run's config, checkpoints and TensorBoard files live.

    <train.storage>/<train.name>/
        config.yaml                 the resolved config (what --resume reads back)
        tensorboard/                rank 0's event files
        best/state.pt               the best epoch so far (by test top-1)
        checkpoint_*/state.pt       the last train.keep_checkpoints epochs (Ray's or ours)
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from rsam_dist.config import Config, load_config
from rsam_dist.errors import UserError

CONFIG_FILE = "config.yaml"
STATE_FILE = "state.pt"
LOCAL_CHECKPOINT_PREFIX = "checkpoint_epoch="


def is_uri(path: str) -> bool:
    return "://" in path


def with_run_name(config: Config) -> Config:
    """`config` with train.name filled in (timestamped) when the user left it unset."""
    if config.train.name:
        return config
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"rsam-{config.data.name}-g{config.model.glimpses}-{stamp}"
    return config.model_copy(update={"train": config.train.model_copy(update={"name": name})})


def run_dir(config: Config) -> str:
    """The run's directory: an absolute local path, or a URI."""
    storage = config.train.storage
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    return f"{storage.rstrip('/')}/{config.train.name}"


def local_dir(path: str) -> Path | None:
    return None if is_uri(path) else Path(path)


def save_run_config(path: str, config: Config) -> None:
    write_bytes(f"{path}/{CONFIG_FILE}", config.to_yaml().encode())


def load_run_config(path: str, overrides: tuple[str, ...] = ()) -> Config:
    """The config a run was started with, for --resume; overrides may extend train.epochs."""
    directory = Path(path)
    if not (directory / CONFIG_FILE).is_file():
        raise UserError(f"{path}: not a run directory (no {CONFIG_FILE}); pass the directory a run printed")
    return load_config(directory / CONFIG_FILE, overrides)


def tensorboard_dir(path: str, config: Config) -> Path:
    """Event files go beside the run on a local disk; for a URI run, under ./runs/<name>/."""
    base = local_dir(path) or Path("runs") / (config.train.name or "run")
    return base / "tensorboard"


# --- state files (local paths or URIs, through pyarrow's filesystems as Ray's storage is) -----


def write_bytes(target: str, payload: bytes) -> None:
    if is_uri(target):
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(target)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with filesystem.open_output_stream(path) as stream:
            stream.write(payload)
        return
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(f"{target}.tmp")
    temporary.write_bytes(payload)
    temporary.replace(target)  # atomic: a crash never leaves half a checkpoint


def save_state(target: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(target, buffer.getvalue())


def load_state(source: str | Path) -> dict[str, Any]:
    return torch.load(source, map_location="cpu", weights_only=False)


# --- local (non-Ray) checkpoints ------------------------------------------------------------


def save_local_checkpoint(path: Path, state: dict[str, Any], keep: int) -> Path:
    """Write epoch `state['epoch']`'s checkpoint and delete all but the newest `keep`."""
    target = path / f"{LOCAL_CHECKPOINT_PREFIX}{state['epoch']:04d}"
    save_state(str(target / STATE_FILE), state)
    for old in local_checkpoints(path)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def local_checkpoints(path: Path) -> list[Path]:
    return sorted(p for p in path.glob(f"{LOCAL_CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file())


def latest_local_state(path: Path) -> dict[str, Any] | None:
    found = local_checkpoints(path)
    return load_state(found[-1] / STATE_FILE) if found else None
