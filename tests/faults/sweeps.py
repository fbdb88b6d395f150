"""Fault rows for sweeps: values that only fail mid-sweep, a metric no trial reports, resumes that
would silently ignore what they were given, hand-edited or binary files, two commands on one sweep
directory, a torn metrics line and an unreadable Tune state.

Rows that are refused before Ray starts run in this process. The last two resume a real finished
sweep on Ray (made once per session, copied per row): run the matrix under the Ray lock,
`flock /tmp/rsam-ray.lock pytest tests/test_faults.py`.
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faults import Case, Env

SWEEP_DIR = "runs/s"
_held_locks: list = []


def sweep_document(**fields) -> dict:
    """A small sweep over the debug-size model on digits, stored in ./runs/s."""
    document = {
        "name": "s",
        "storage": "runs",
        "base": {
            "model": {"hidden_size": 64, "glimpses": 2},
            "data": {"name": "digits", "limit_train": 256, "limit_test": 128},
            "optim": {"batch_size": 32},
            "train": {"epochs": 2, "mask_images": 2},
        },
        "search": {"model.glimpses": {"grid": [1, 2]}},
        "max_concurrent_trials": 2,
    }
    document.update(fields)
    return document


def sweep_file(**fields):
    """Setup: s.yaml holding `sweep_document(**fields)`."""

    def setup(env: Env) -> None:
        (env.tmp / "s.yaml").write_text(yaml.safe_dump(sweep_document(**fields)))

    return setup


def stored_sweep(env: Env) -> None:
    """s.yaml, and the sweep directory it started (sweep.yaml only), as `rsam-dist sweep` leaves it."""
    from rsam_dist.sweep.config import load_sweep
    from rsam_dist.sweep.results import write_sweep_file

    sweep_file()(env)
    previous = Path.cwd()
    try:
        os.chdir(env.tmp)  # storage: runs is relative to the working directory, as for the command
        write_sweep_file(load_sweep(env.tmp / "s.yaml"))
    finally:
        os.chdir(previous)


def stored_sweep_then_edited(env: Env) -> None:
    stored_sweep(env)
    sweep_file(search={"model.glimpses": {"grid": [1, 2, 3]}})(env)


def finished_tables(env: Env) -> None:
    """A sweep directory with results.csv and history.csv, written by the sweep's own writers."""
    from rsam_dist.sweep.config import ResolvedSweep, load_sweep
    from rsam_dist.sweep.results import EpochRecord, TrialResult, write_results, write_sweep_file

    sweep_file()(env)
    sweep = load_sweep(env.tmp / "s.yaml")
    sweep = ResolvedSweep(sweep.spec.model_copy(update={"storage": str(env.tmp / "runs")}), sweep.base, sweep.source)
    write_sweep_file(sweep)
    trials = []
    for index, glimpses in enumerate((1, 2)):
        history = [EpochRecord(epoch=epoch, metrics={"train_loss": 2.0 / epoch, "test_top1": 0.3 * epoch + 0.1 * index})
                   for epoch in (1, 2)]
        trials.append(TrialResult(trial_id=f"t{index}", status="completed", epochs_run=2, epochs_planned=2,
                                  params={"model.glimpses": glimpses, "train.seed": 0}, final=history[-1].metrics,
                                  best_test_top1=history[-1].metrics["test_top1"],
                                  run_dir=str(env.tmp / SWEEP_DIR / "trials" / f"t{index}"), history=history))
    write_results(sweep, trials)


def edit_results_cell(column: str, value: str, row: int = 1):
    """Setup: finished tables, then one cell of results.csv edited by hand (row 1: line 2)."""

    def setup(env: Env) -> None:
        finished_tables(env)
        path = env.tmp / SWEEP_DIR / "results.csv"
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        rows[row][rows[0].index(column)] = value
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)

    return setup


def results_line_with_extra_cell(env: Env) -> None:
    finished_tables(env)
    path = env.tmp / SWEEP_DIR / "results.csv"
    lines = path.read_text().splitlines()
    lines[2] += ",surplus"
    path.write_text("\n".join(lines) + "\n")


def binary_sweep_file(env: Env) -> None:
    (env.tmp / "s.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe" + bytes(range(256)))


def _hold(lock_file: Path) -> None:
    handle = open(lock_file, "a+")  # noqa: SIM115 - released by release_locks
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("pid 4242: rsam-dist sweep s.yaml")
    handle.flush()
    _held_locks.append(handle)


def sweep_running(env: Env):
    """s.yaml, and another `rsam-dist sweep` holding the lock of its directory runs/s."""
    sweep_file()(env)
    (env.tmp / "runs").mkdir()
    _hold(env.tmp / "runs" / ".s.lock")
    return release_locks


def sweep_running_over_tables(env: Env):
    finished_tables(env)
    _hold(env.tmp / "runs" / ".s.lock")
    return release_locks


def release_locks() -> None:
    while _held_locks:
        _held_locks.pop().close()


# --- a real finished sweep (Ray), made once per session ---------------------------------------


def finished_sweep(env: Env) -> Path:
    """A copy, in this row's runs/s, of a 2-trial (glimpses 1 and 2) x 2-epoch sweep that ran on Ray."""
    cache = env.tmp.parent / "finished-sweep"
    if not (cache / SWEEP_DIR / "results.csv").is_file():
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        (cache / "s.yaml").write_text(yaml.safe_dump(sweep_document()))
        script = Path(sys.executable).with_name("rsam-dist")
        done = subprocess.run([str(script), "sweep", "s.yaml"], cwd=cache, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            pytest.fail(f"the finished sweep for the sweep rows failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    shutil.copytree(cache / SWEEP_DIR, env.tmp / SWEEP_DIR)
    return env.tmp / SWEEP_DIR


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(path for path in (sweep_dir / "trials").iterdir() if path.is_dir())


def torn_metrics_line(env: Env) -> None:
    """A trial's metrics.jsonl with a line torn by a crash, before the epoch that was then redone."""
    metrics = trial_dirs(finished_sweep(env))[0] / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(f"{first}\n{second[: len(second) // 2]}\n{second}\n")


def unreadable_tune_state(env: Env) -> None:
    """Tune's experiment state cut short, and one trial's second epoch not recorded yet (it was
    running when the state broke): that trial can no longer be resumed."""
    sweep_dir = finished_sweep(env)
    for state in (sweep_dir / "tune").glob("experiment_state-*.json"):
        state.write_bytes(state.read_bytes()[:40])
    metrics = trial_dirs(sweep_dir)[1] / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")


def results_rows(env: Env) -> list[dict[str, str]]:
    with (env.tmp / SWEEP_DIR / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def both_trials_completed_and_report_works(env: Env, stdout: str, stderr: str) -> None:
    rows = results_rows(env)
    assert [(row["status"], row["epochs_run"]) for row in rows] == [("completed", "2")] * 2, rows
    assert all(row["run_dir"].startswith(str(env.tmp)) for row in rows), "the copy resumed the original sweep"
    from click.testing import CliRunner

    from rsam_dist.cli import main

    report = CliRunner().invoke(main, ["report", str(env.tmp / SWEEP_DIR)])
    assert report.exit_code == 0, report.output
    assert (env.tmp / SWEEP_DIR / "report.md").is_file()


def one_trial_lost(env: Env, stdout: str, stderr: str) -> None:
    statuses = sorted(row["status"] for row in results_rows(env))
    assert statuses == ["completed", "lost"], statuses
    lost = next(row for row in results_rows(env) if row["status"] == "lost")
    assert lost["model.glimpses"] in ("1", "2") and lost["epochs_run"] == "1", lost


def nothing_started(env: Env, stdout: str, stderr: str) -> None:
    assert not (env.tmp / SWEEP_DIR).exists(), "a refused sweep left its directory"


def validated_int_range(env: Env, stdout: str, stderr: str) -> None:
    assert "int:" in stdout and "- 1" in stdout and "- 3" in stdout, stdout


SWEEP = ("sweep", "s.yaml")
RESUME = ("sweep", "s.yaml", "--resume")
# Ray starts in ~30 s; a loaded machine is slower. The finished sweep these rows resume takes ~1.5 min.
RAY_ROW = dict(subprocess=True, timeout=480, changes=(SWEEP_DIR,), slow=True)

CASES = [
    Case("sweep-bad-later-grid-value", SWEEP, 2, ("search.model.glimpses", "greater than or equal to 1"),
         setup=sweep_file(search={"model.glimpses": {"grid": [1, 2, 0]}}), check=nothing_started),
    Case("sweep-bad-upper-bound", SWEEP, 2, ("search.optim.momentum", "less than 1"),
         setup=sweep_file(search={"optim.momentum": {"uniform": [0.5, 1.0]}}, algorithm="random"),
         check=nothing_started),
    Case("sweep-float-range-on-an-integer-key", SWEEP, 2, ("search.model.glimpses", "{int: [low, high]}"),
         setup=sweep_file(search={"model.glimpses": {"uniform": [1, 4]}}, algorithm="random"),
         check=nothing_started),
    Case("sweep-int-distribution-validates", ("validate", "s.yaml"), 0,
         setup=sweep_file(search={"model.glimpses": {"int": [1, 3]}}, algorithm="random"),
         check=validated_int_range),
    Case("sweep-int-range-off-multiple", SWEEP, 2, ("search.model.hidden_size", "multiple of 64"),
         setup=sweep_file(search={"model.hidden_size": {"int": [64, 256]}}, algorithm="random")),
    Case("sweep-metric-glimpse-not-reported", SWEEP, 2, ("test_top1_glimpse_2", "1 glimpse"),
         setup=sweep_file(metric="test_top1_glimpse_2"), check=nothing_started),
    Case("sweep-storage-uri-refused", SWEEP, 2, ("storage", "not a uri"),
         setup=sweep_file(storage="s3://bucket/sweeps")),
    Case("sweep-resume-refuses-set", (*RESUME, "--set", "train.epochs=5"), 2, ("--resume", "drop --set"),
         setup=stored_sweep),
    Case("sweep-resume-refuses-other-file", RESUME, 2, ("differs from the sweep stored", "search.model.glimpses"),
         setup=stored_sweep_then_edited),
    Case("sweep-file-binary", SWEEP, 2, ("s.yaml", "not a text file"), setup=binary_sweep_file),
    Case("sweep-second-on-same-directory", SWEEP, 2, ("another rsam-dist command", "pid 4242"),
         setup=sweep_running, check=nothing_started),
    Case("report-while-sweep-runs", ("report", SWEEP_DIR), 2, ("another rsam-dist command", "pid 4242"),
         setup=sweep_running_over_tables),
    Case("report-hand-edited-results-cell", ("report", SWEEP_DIR), 2, ("results.csv", "line 3", "epochs_run"),
         setup=edit_results_cell("epochs_run", "two", row=2)),
    Case("report-hand-edited-results-status", ("report", SWEEP_DIR), 2, ("results.csv", "line 2", "status"),
         setup=edit_results_cell("status", "done")),
    Case("report-results-extra-cell", ("report", SWEEP_DIR), 2, ("results.csv", "line 3", "more cells"),
         setup=results_line_with_extra_cell),
    Case("sweep-torn-metrics-line", ("sweep", SWEEP_DIR, "--resume"), 0, setup=torn_metrics_line,
         check=both_trials_completed_and_report_works, **RAY_ROW),
    Case("sweep-unreadable-tune-state-reports-lost", ("sweep", SWEEP_DIR, "--resume"), 2,
         ("1 of 2 trials lost", "results.csv"), setup=unreadable_tune_state, check=one_trial_lost, **RAY_ROW),
]
