"""Sweeps on real Ray Tune + Optuna, on tiny data: grid with DDP trials, Optuna + ASHA, resume, errors."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rsam_dist.cli import main
from rsam_dist.sweep import load_sweep, run_sweep

pytestmark = pytest.mark.ray

RSAM_DIST = [sys.executable, "-m", "rsam_dist.cli"]
REPO = Path(__file__).resolve().parents[1]


def write_sweep(tmp_path: Path, name: str = "s", **fields) -> Path:
    document = {
        "name": name,
        "storage": str(tmp_path),
        "base": {
            "data": {"name": "digits", "limit_train": 256, "limit_test": 120},
            "optim": {"batch_size": 32},
            "train": {"epochs": 2, "mask_images": 2},
        },
    }
    document.update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_grid_sweep_of_two_worker_ddp_trials(tmp_path):
    sweep_file = write_sweep(
        tmp_path,
        search={"model.glimpses": {"grid": [1, 2]}},
        trial={"num_workers": 2},
        set={"train.epochs": 1},
    )
    directory = run_sweep(load_sweep(sweep_file))
    rows = read_rows(directory / "results.csv")
    assert sorted(row["model.glimpses"] for row in rows) == ["1", "2"]
    assert {row["status"] for row in rows} == {"completed"}
    for row in rows:
        assert 0.0 <= float(row["final_test_top1"]) <= 1.0
        trial_config = yaml.safe_load(Path(row["run_dir"], "config.yaml").read_text())
        assert trial_config["scaling"]["num_workers"] == 2  # each trial was a 2-worker DDP run
    history = read_rows(directory / "history.csv")
    assert len(history) == 2
    # The best config is a training config that `rsam-dist validate` accepts.
    validated = subprocess.run([*RSAM_DIST, "validate", str(directory / "best_config.yaml")],
                               capture_output=True, text=True)
    assert validated.returncode == 0, validated.stderr
    # One TensorBoard directory for the sweep: Tune's per-trial logs and each trial's own run.
    event_files = list(directory.rglob("events.out.tfevents.*"))
    assert any("trials" in f.parts for f in event_files) and any("tune" in f.parts for f in event_files)
    accumulator = EventAccumulator(str(next(f for f in event_files if "trials" in f.parts)))
    accumulator.Reload()
    assert "test/top1" in accumulator.Tags()["scalars"]


def test_optuna_with_asha_stops_some_trials_early(tmp_path):
    sweep_file = write_sweep(
        tmp_path,
        search={"optim.lr": {"loguniform": [0.0001, 0.05]}},
        algorithm="optuna",
        num_samples=4,
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
        max_concurrent_trials=2,
        set={"train.epochs": 3},
    )
    directory = run_sweep(load_sweep(sweep_file))
    rows = read_rows(directory / "results.csv")
    assert len(rows) == 4
    assert len({row["optim.lr"] for row in rows}) == 4  # TPE proposed four different rates
    statuses = [row["status"] for row in rows]
    assert "stopped_early" in statuses and "completed" in statuses, statuses
    for row in rows:
        if row["status"] == "stopped_early":
            assert int(row["epochs_run"]) < 3


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    sweep_file = write_sweep(
        tmp_path, search={"model.glimpses": {"grid": [1, 2, 3]}}, max_concurrent_trials=1
    )
    directory = tmp_path / "s"
    process = subprocess.Popen([*RSAM_DIST, "sweep", str(sweep_file)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO)
    deadline = time.monotonic() + 240
    seen = []
    for line in process.stdout:  # wait for the first trial to finish
        seen.append(line)
        if "finished (1/3 trials done)" in line:
            break
        assert time.monotonic() < deadline, "no trial finished in time"
    else:
        pytest.fail("the sweep ended before its first trial finished:\n" + "".join(seen[-20:]))
    process.send_signal(signal.SIGINT)  # Ctrl-C
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    finished = [row for row in read_rows(directory / "results.csv") if row["status"] == "completed"]
    assert finished, "no finished trial was recorded before the interrupt"
    finished_ids = {row["trial_id"] for row in finished}

    resumed = subprocess.run([*RSAM_DIST, "sweep", str(sweep_file), "--resume"], capture_output=True,
                             text=True, cwd=REPO, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_rows(directory / "results.csv")
    assert len(rows) == 3 and {row["status"] for row in rows} == {"completed"}
    for trial_id in finished_ids:  # finished trials were not run again
        assert f"[{trial_id} " not in resumed.stdout


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"serach": {}}, "unknown key 'serach'"),
        ({"search": {"model.glimpse": {"grid": [1, 2]}}}, "search.model.glimpse"),
        ({"search": {"model.glimpses": {"grid": [0, 2]}}}, "model.glimpses"),
        ({"search": {"optim.lr": {"loguniform": [0.1, 0.01]}}}, "low must be below high"),
        ({"search": {"optim.lr": {"uniform": [0.01, 0.1]}}, "algorithm": "grid"}, "use algorithm random or optuna"),
        ({"search": {"optim.lr": {"grid": [0.1], "choice": [0.2]}}}, "exactly one of"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
        ({"base": "missing.yaml"}, "base config missing.yaml not found"),
        # Every value is checked, not only the first: a later grid value, an upper bound, a clash.
        ({"search": {"model.glimpses": {"grid": [1, 2, 65]}}}, "less than or equal to 64"),
        ({"search": {"optim.momentum": {"uniform": [0.5, 1.0]}}, "algorithm": "random"}, "search.optim.momentum"),
        ({"search": {"optim.batch_size": {"grid": [32, 33]}}, "trial": {"num_workers": 2}}, "must divide"),
        ({"metric": "test_top1_glimpse_9"}, "test_top1_glimpse_9"),
        ({"search": {"model.glimpses": {"grid": [1, 4]}}, "metric": "test_top1_glimpse_4"}, "1 glimpse"),
    ],
)
def test_bad_sweep_files_exit_2_with_one_line(tmp_path, fields, expected):
    sweep_file = write_sweep(tmp_path, **fields)
    for command in ("sweep", "validate"):
        result = CliRunner().invoke(main, [command, str(sweep_file)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()  # nothing started


def test_int_distribution_validates_and_draws_inclusive_integers(tmp_path):
    from ray import tune

    from rsam_dist.sweep.tune import param_space

    sweep_file = write_sweep(tmp_path, search={"model.glimpses": {"int": [1, 3]}}, algorithm="random")
    result = CliRunner().invoke(main, ["validate", str(sweep_file)])
    assert result.exit_code == 0, result.output
    domain = param_space(load_sweep(sweep_file).spec, {})["model.glimpses"]
    assert isinstance(domain, tune.search.sample.Integer) and (domain.lower, domain.upper) == (1, 4)


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_sweep_file_validates(path):
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "trials" in result.stdout
