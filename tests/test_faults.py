"""The fault matrix: bad inputs and injected faults, one row each, against the real `rsam-dist`.

Each row names the command, the fault a setup function injects into a fresh folder, the exit code
and the words stderr must hold. Every row also checks: at most 3 lines on stderr, no traceback,
that it ends within its time limit (rows that used to hang say so), and that every file that
existed before the command is byte-identical after it (nothing lost, nothing rewritten).

Rows run the CLI in this process through Click's test runner unless they set `subprocess=True`
(those that start Ray, or need a clean process). Row tables live beside their area's setups in
tests/faults/*.py; this file only runs them.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults import ALL_CASES, Case, Env

from rsam_dist.cli import main

_SCRIPT = Path(sys.executable).with_name("rsam-dist")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (lock files aside: taking a lock writes its holder) -> its digest."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def run_case(case: Case, env: Env) -> tuple[int, str, str, float]:
    argv = [part.format(tmp=env.tmp, repo=env.repo) for part in case.argv]
    started = time.monotonic()
    if case.subprocess:
        process_env = {k: v for k, v in os.environ.items() if k not in ("RSAM_DEBUG", "RAY_ADDRESS")}
        process_env.update(case.env)
        command = [str(_SCRIPT), *argv] if _SCRIPT.exists() else [sys.executable, "-m", "rsam_dist.cli", *argv]
        try:
            result = subprocess.run(command, cwd=env.tmp, env=process_env, capture_output=True, text=True,
                                    timeout=case.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{case.id}: still running after {case.timeout} s: {shlex.join(argv)}")
        return result.returncode, result.stdout, result.stderr, time.monotonic() - started
    previous = Path.cwd()
    os.chdir(env.tmp)
    try:
        result = CliRunner().invoke(main, argv, env=case.env, catch_exceptions=True)
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr, time.monotonic() - started


def _marks(case: Case) -> list[pytest.MarkDecorator]:
    # A row run as a child process may start a local Ray, which rsam-dist refuses beside another:
    # `ray` has conftest stop the session's shared head first.
    return [*([pytest.mark.ray] if case.subprocess else []), *([pytest.mark.slow] if case.slow else [])]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id, marks=_marks(case)) for case in ALL_CASES])
def test_fault(case: Case, tmp_path: Path, repo_root: Path, finished_run: Path, request) -> None:
    env = Env(tmp=tmp_path, repo=repo_root, finished_run=finished_run)
    if case.setup is not None:
        cleanup = case.setup(env)  # a setup may return its own undo (an unmount, a released lock)
        if callable(cleanup):
            request.addfinalizer(cleanup)
    before = snapshot(tmp_path)
    code, stdout, stderr, seconds = run_case(case, env)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == case.exit_code, (
        f"exit {code}, wanted {case.exit_code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) <= 3, f"{len(lines)} lines on stderr:\n{stderr[-3000:]}"
    for words in case.words:
        assert words.lower() in (stderr + (stdout if case.words_anywhere else "")).lower(), (
            f"{words!r} not in stderr: {stderr[-2000:]}")
    assert seconds < case.timeout, f"took {seconds:.0f} s (limit {case.timeout} s)"
    after = snapshot(tmp_path)
    changed = [name for name, digest in before.items()
               if after.get(name) != digest and not name.startswith(case.changes or ("\0",))]
    assert not changed, f"files lost or rewritten: {changed[:5]}"
    if case.check is not None:
        case.check(env, stdout, stderr)
