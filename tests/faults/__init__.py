"""Rows of the fault matrix (tests/test_faults.py), one module per area.

A row is a `Case`: the rsam-dist arguments (`{tmp}` and `{repo}` are filled in), a setup that
injects the fault into the test's fresh folder, and what must come out. Add a row to the module of
its area and, for a new area, add the module to `ALL_CASES` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Env:
    tmp: Path
    """The case's own empty folder, and the command's working directory."""
    repo: Path
    """The repository root (configs/, sweeps/, cluster/)."""
    finished_run: Path
    """A finished 2-epoch local run (debug-size model, digits) made once per session: copy it."""


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    exit_code: int
    words: tuple[str, ...] = ()
    """Each must appear in stderr (case-insensitive)."""
    setup: Callable[[Env], Callable[[], None] | None] | None = None
    """Injects the fault; may return a function that undoes it (run even when the row fails)."""
    timeout: float = 60.0
    """Seconds; rows that used to hang keep the limit the issue promises."""
    subprocess: bool = False
    """Run `rsam-dist` as a child process (Ray, signals) instead of in this process."""
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Env, str, str], None] | None = None
    """Extra assertions on the outcome (stdout, stderr), for rows whose exit code is not the point."""
    words_anywhere: bool = False
    """Look for `words` in stdout too."""
    changes: tuple[str, ...] = ()
    """Relative paths under which files may change (a row whose command rightly does work there)."""
    slow: bool = False
    """A row of minutes (a whole sweep on Ray): `make test-slow` runs it, `make test` does not."""


def _all_cases() -> list[Case]:
    from faults import cluster_edge, hangs, inputs, runs, sweeps

    cases = [*runs.CASES, *inputs.CASES, *cluster_edge.CASES, *sweeps.CASES, *hangs.CASES]
    ids = [case.id for case in cases]
    duplicated = {i for i in ids if ids.count(i) > 1}
    assert not duplicated, f"duplicate fault ids: {duplicated}"
    return cases


ALL_CASES = _all_cases()
