"""Tiny sweep files for the tests, and reading a sweep's CSVs back as plain rows."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

BASE = {
    "model": {"hidden_size": 64, "glimpses": 2},  # the debug model (config.DEBUG_MODEL)
    "data": {"name": "digits", "limit_train": 256, "limit_test": 120},
    "optim": {"batch_size": 32},
    "train": {"epochs": 2, "mask_images": 2},
}


def write_sweep(directory: Path, name: str = "s", **fields) -> Path:
    """`directory/<name>.yaml`: a sweep of the debug model on a slice of digits, storing in `directory`."""
    document = {"name": name, "storage": str(directory), "base": BASE, **fields}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))
