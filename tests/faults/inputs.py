"""Fault rows for the machine's files: a full disk, a read-only storage folder, a path too long.

The disk faults need real mounts (a tiny tmpfs, a read-only bind mount), so they run where the
tests run as root (CI, the development machines); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from faults import Case, Env

DEBUG = ("--set", "model.hidden_size=64", "--set", "model.glimpses=2")
SMALL = ("--set", "data.limit_train=256", "--set", "data.limit_test=128", "--set", "train.epochs=1",
         "--set", "train.mask_images=2")
LOCAL_RUN = ("train", "{repo}/configs/digits.yaml", "--local", *DEBUG, *SMALL, "--set", "train.name=r")


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small or read-only file system")
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here: {result.stderr.strip()[:100]}")


def _unmount(path: Path):
    return lambda: subprocess.run(["umount", "-l", str(path)], capture_output=True)


def small_disk(env: Env):
    """Storage on a 256 KiB tmpfs: config.yaml fits, a checkpoint does not."""
    folder = env.tmp / "full"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder))
    return _unmount(folder)


def read_only_storage(env: Env):
    folder = env.tmp / "ro"
    folder.mkdir()
    _mount("--bind", "-o", "ro", str(folder), str(folder))
    return _unmount(folder)


def no_temporary_left(env: Env, stdout: str, stderr: str) -> None:
    left = [p.name for p in (env.tmp / "full").rglob("*.tmp")]
    assert not left, f"temporary files left behind: {left}"


CASES = [
    Case("disk-full-one-line", (*LOCAL_RUN, "--set", "train.storage=full"), 2,
         ("no space left", "free some space"), setup=small_disk, check=no_temporary_left, timeout=120),
    Case("storage-read-only-one-line", (*LOCAL_RUN, "--set", "train.storage=ro"), 2,
         ("read-only",), setup=read_only_storage),
    Case("storage-path-too-long", (*LOCAL_RUN, "--set", "train.storage=" + "/".join(["d" * 250] * 20)), 2,
         ("too long",)),
]
