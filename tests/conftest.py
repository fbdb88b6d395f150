"""Shared fixtures for the core tests (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
