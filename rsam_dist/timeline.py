"""Wall-clock marks of a run's phases, for the start-up and tail measurements of `make bench`.

Off unless RSAM_TIMELINE names a file; then every process of the run (the CLI, Ray's workers,
which inherit the variable from the local Ray they were started by) appends one JSON line per
mark: {"event", "time" (Unix seconds), "pid", ...}. Nothing here imports torch or Ray.

    RSAM_TIMELINE=/tmp/t.jsonl rsam-dist train configs/digits.yaml --set train.epochs=2
    python -c "from rsam_dist.timeline import read; print(read('/tmp/t.jsonl'))"
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "RSAM_TIMELINE"


def mark(event: str, **fields: Any) -> None:
    """Append `event` with the current time; a no-op unless RSAM_TIMELINE is set."""
    path = os.environ.get(ENV)
    if not path:
        return
    record = {"event": event, "time": time.time(), "pid": os.getpid(), **fields}
    try:
        # One short write in append mode: lines from concurrent processes do not interleave.
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError:
        pass  # a measurement aid: an unwritable RSAM_TIMELINE must never stop a training run


def read(path: str | Path) -> list[dict[str, Any]]:
    """Every mark in `path`, in time order."""
    lines = Path(path).read_text().splitlines() if Path(path).is_file() else []
    return sorted((json.loads(line) for line in lines if line.strip()), key=lambda record: record["time"])
