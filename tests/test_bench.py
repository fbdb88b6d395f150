"""The benchmarks run (tiny sizes, no timing asserted): `make bench` in-process, its table and
JSON, the phases it reads from a run's timeline, and gpu_bench.py's CPU-runnable arms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench  # noqa: E402  (a script beside its sibling author_loop.py, not a package)


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
