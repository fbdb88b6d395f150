"""The benchmarks run (tiny sizes, no timing asserted): `make bench` in-process, its table and
JSON, the phases it reads from a run's timeline, and gpu_bench.py's CPU-runnable arms."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402  (a script beside its sibling author_loop.py, not a package)
import ray_floor  # noqa: E402


def _run(script: str, *arguments: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *arguments], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_bench_in_process_writes_its_table(tmp_path):
    out = tmp_path / "bench"
    stdout = _run("bench.py", "--skip-ray", "--repeats", "1", "--epoch-repeats", "1", "--epoch-images", "64",
                  "--batch", "32", "--glimpses", "1", "--precisions", "fp32", "bf16", "--out", str(out))
    table = (out / "bench.md").read_text()
    assert table in stdout
    for row in ("author-style step (fp32)", "rsam-dist step, fp32", "rsam-dist step, bf16",
                "author-style epoch (DataLoader, fp32)", "rsam-dist epoch in-process, fp32", "FLOP rate",
                "train.bn_stats precise: recompute"):
        assert row in table, row
    report = json.loads((out / "bench.json").read_text())
    rows = {row["what"]: row for row in report["rows"]}
    assert rows["author-style step (fp32)"]["ratio"] == 1.0
    assert all(row["ratio"] > 0 for row in report["rows"])
    assert report["in_process"]["flops_per_trained_image"] > 0
    assert report["runs"] is None  # --skip-ray


def test_phases_from_a_runs_timeline():
    marks = [
        {"event": "config_ready", "time": 101.0, "pid": 1},
        {"event": "ray_ready", "time": 105.0, "pid": 1},
        {"event": "worker_start", "time": 108.0, "pid": 2},
        {"event": "model_ready", "time": 109.0, "pid": 2, "rank": 0},
        {"event": "data_ready", "time": 109.5, "pid": 2, "rank": 0},
        {"event": "loop_start", "time": 110.0, "pid": 2, "rank": 0},
        {"event": "loop_start", "time": 111.0, "pid": 3, "rank": 1},
        {"event": "epoch_done", "time": 120.0, "pid": 2, "rank": 0},
        {"event": "epoch_done", "time": 121.0, "pid": 3, "rank": 1},
        {"event": "epoch_done", "time": 128.0, "pid": 2, "rank": 0},
        {"event": "epoch_done", "time": 137.0, "pid": 2, "rank": 0},
    ]
    phases = bench.phases(marks, started=100.0, ended=140.0)
    assert phases["first_step"] == 10.0  # rank 0's
    assert phases["ray_ready"] == 5.0
    assert phases["epoch_periods"] == [8.0, 9.0]
    assert phases["tail"] == 3.0
    assert phases["total"] == 40.0


def _run_record(first_step: float, epochs: list[float]) -> dict:
    periods = [later - earlier for earlier, later in zip(epochs, epochs[1:], strict=False)]
    return {"first_step": first_step, "tail": 1.0, "epoch_periods": periods,
            "config_ready": 1.0, "ray_ready": 9.0, "worker_start": 28.0, "model_ready": 30.0, "data_ready": 30.5}


def test_the_start_up_rows_are_ratios_to_ray_trains_floor():
    args = argparse.Namespace(epoch_images=256, batch=128)
    runs = {"in-process (--local)": [_run_record(6.0, [10.0, 20.0, 30.0])],
            "Ray Train, 1 worker": [_run_record(36.0, [40.0, 51.0, 62.0])],
            "Ray Train, 2 workers": [_run_record(40.0, [45.0, 55.0, 65.0])]}
    floors = [{"python_start": 0.8, "ray_ready": 9.0,
               "fits": [{"to_function": 19.0, "total": 20.0, "cpu_busy": 0.70, "cpu_seconds": 26.6},
                        {"to_function": 16.0, "total": 17.0, "cpu_busy": 0.80, "cpu_seconds": 25.6},
                        {"to_function": 17.0, "total": 18.0, "cpu_busy": 0.90, "cpu_seconds": 30.6}]}]
    rows = {row["what"]: row for row in bench.build_rows(None, runs, args, floors)}
    fresh = rows["Ray Train floor: Enter to a no-op train function, fresh local Ray"]
    assert fresh["seconds"] == 28.0  # ray.init at 9 s, then 19 s to the function
    warm = rows["Ray Train floor: fit() to a no-op train function, warm Ray"]
    assert warm["seconds"] == 16.5
    assert "CPUs 85% busy meanwhile (28.1 CPU-seconds)" in warm["note"]  # the medians of the warm fits
    assert "CPUs 70% busy from fit() on (26.6 CPU-seconds)" in fresh["note"]
    assert rows["Ray Train, 1 worker: Enter to first step"]["ratio"] == 36.0 / 28.0
    assert rows["in-process (--local): Enter to first step"]["ratio"] is None
    assert rows["Ray Train, 1 worker: epoch"]["ratio"] == 11.0 / 10.0
    no_floor = {row["what"]: row for row in bench.build_rows(None, runs, args)}
    assert no_floor["Ray Train, 1 worker: Enter to first step"]["ratio"] is None


def test_ray_floor_sums_the_cpu_of_each_kind_of_process_by_rays_names():
    snapshots = {
        "before": {1: ("ray::TrainController.run", 1.0), 9: ("raylet --node", 5.0)},
        "entered": {1: ("ray::TrainController.run", 3.5), 2: ("ray::Synchroniz", 2.0), 3: ("ray::RayTrainWo", 4.0),
                    4: ("/venv/bin/python -u /ray/_private/log_monitor.py --x", 0.5), 9: ("raylet --node", 5.0),
                    5: ("ray::PlacementGroupCleaner.stop", 1.0), 6: ("ray::PlacementGroupCleaner", 2.0)},
    }
    actors = {2: "ray::SynchronizationActor", 3: "ray::RayTrainWorker"}  # Ray's record of the cut names
    assert ray_floor.by_process(snapshots, actors) == {
        "ray::RayTrainWorker": 4.0, "ray::PlacementGroupCleaner": 3.0, "ray::TrainController": 2.5,
        "ray::SynchronizationActor": 2.0, "python log_monitor.py": 0.5}  # the raylet spent nothing


@pytest.mark.slow
@pytest.mark.ray
def test_ray_floor_times_no_op_fits_on_one_local_ray():
    floor = json.loads(_run("ray_floor.py", "--fits", "2").strip().splitlines()[-1])
    assert 0 < floor["python_start"] < floor["ray_ready"]
    assert len(floor["fits"]) == 2
    assert all(0 < fit["to_function"] < fit["total"] for fit in floor["fits"])
    if sys.platform == "linux":  # /proc/stat's counters, read by the driver and by the worker
        assert all(0 < fit["cpu_busy"] <= 1 and fit["cpu_seconds"] > 0 for fit in floor["fits"])
        assert all({"ray::TrainController", "ray::RayTrainWorker"} <= set(fit["by_process"]) for fit in floor["fits"])


@pytest.mark.slow
def test_gpu_bench_runs_its_cpu_parts():
    stdout = _run("gpu_bench.py", "--device", "cpu", "--train-size", "64", "--test-size", "32", "--batch", "32",
                  "--glimpses", "1", "--epochs", "1", "--warmup-steps", "1", "--no-compile", "--packed", "1", "2",
                  "--packed-steps", "1", "--packed-train-size", "64")
    for text in ("fp32 ", "bf16 ", "evaluation of 32 images at batch   500", "packed trials x2"):
        assert text in stdout, text


def test_an_unwritable_timeline_never_stops_a_run(tmp_path, monkeypatch):
    from rsam_dist import timeline

    monkeypatch.setenv(timeline.ENV, str(tmp_path / "missing-folder" / "t.jsonl"))
    timeline.mark("loop_start", rank=0)  # no error: the mark is lost, the run goes on
    monkeypatch.setenv(timeline.ENV, str(tmp_path / "t.jsonl"))
    timeline.mark("loop_start", rank=0)
    assert [mark["event"] for mark in timeline.read(tmp_path / "t.jsonl")] == ["loop_start"]


def test_cpu_by_process_finds_the_process_that_burns_cpu():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        stdout = _run("cpu_by_process.py", "--seconds", "1.5")
    finally:
        busy.kill()
        busy.wait()
    lines = [line.split(None, 3) for line in stdout.splitlines()[1:-1]]
    busiest = {int(pid): float(seconds) for seconds, _, pid, _ in lines}
    assert busiest.get(busy.pid, 0) > 0.5, stdout
    assert "of the machine" in stdout.splitlines()[-1]
