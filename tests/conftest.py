"""Shared fixtures for the core tests (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsam_dist.config import DEBUG_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    """The repository root (where configs/ lives)."""
    return REPO_ROOT


@pytest.fixture
def normalised_images() -> torch.Tensor:
    """A small batch of random images normalised as the data pipeline does: values in [-1, 1]."""
    generator = torch.Generator().manual_seed(1234)
    pixels = torch.randint(0, 256, (6, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return (pixels.float() / 255.0 - 0.5) / 0.5




@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch `--local` run on digits with the debug model (copy it before changing it)."""
    import subprocess
    import sys

    storage = tmp_path_factory.mktemp("finished")
    script = Path(sys.executable).with_name("rsam-dist")
    overrides = [*DEBUG_MODEL, "data.limit_train=256", "data.limit_test=128", "train.epochs=2",
                 "train.mask_images=2", "train.name=done", f"train.storage={storage}"]
    command = [str(script), "train", str(REPO_ROOT / "configs/digits.yaml"), "--local"]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return storage / "done"
