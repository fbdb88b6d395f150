"""A real 3-seed sweep on digits (debug model, tiny data, real Ray Tune): `rsam-dist sweep` prints the
plan first, results.csv puts each trial's measured time beside the estimate, and the report gives
intervals, a between-arm test and the "not comparable" line. Run it under the Ray lock:

    flock /tmp/rsam-ray.lock python -m pytest -q tests/test_replication_sweep.py
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Six Ray trials: minutes on a loaded 2-core machine.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
RSAM_DIST = [sys.executable, "-m", "rsam_dist.cli"]


def test_three_seed_digits_sweep_reports_intervals_and_a_between_arm_test(tmp_path):
    sweep_file = tmp_path / "rep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "rep", "storage": str(tmp_path), "base": str(REPO / "configs/digits.yaml"),
        "set": {"model.hidden_size": 64, "model.glimpses": 2, "data.limit_train": 512, "data.limit_test": 180,
                "optim.batch_size": 32, "train.epochs": 3, "train.mask_images": 2},
        "search": {"model.feedback": {"grid": [True, False]}},
        "seeds": 3,
    }))
    swept = subprocess.run([*RSAM_DIST, "sweep", str(sweep_file)], capture_output=True, text=True, timeout=1700)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert re.search(r"^plan: 6 trial\(s\), \d+ at a time on this machine, about .+, pre-flight ok$", swept.stderr,
                     re.MULTILINE), swept.stderr[-2000:]

    directory = tmp_path / "rep"
    with (directory / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["model.feedback"], row["train.seed"]) for row in rows) == [
        (feedback, seed) for feedback in ("False", "True") for seed in ("0", "1", "2")]
    for row in rows:
        assert float(row["seconds"]) > 0 and float(row["estimated_seconds"]) > 0
        assert float(row["gpu_hours"]) == 0.0  # CPU trials

    reported = subprocess.run([*RSAM_DIST, "report", str(directory)], capture_output=True, text=True, timeout=600)
    assert reported.returncode == 0, reported.stderr
    text = (directory / "report.md").read_text()
    # arm | completed | stopped early | mean | std | best | epochs | 95% CI of the mean
    row = r"^\| feedback (on|off) \| 3 \| 0 \| [\d.]+% \| [\d.]+ \| [\d.]+% \| 3 \| ([\d.]+)% to ([\d.]+)% \|$"
    arms = re.findall(row, text, re.MULTILINE)
    assert [arm[0] for arm in arms] == ["on", "off"], text
    assert all(float(low) <= float(high) for _, low, high in arms)
    sentence = re.search(r"^- Feedback (adds|costs) [\d.]+ points, (95% CI -?[\d.]+ to -?[\d.]+, p [=<] [\d.]+, "
                         r"|every seed gave the same accuracy)", text, re.MULTILINE)
    assert sentence, text
    assert "n = 3 per arm" in text
    assert "**Verdict: not comparable.** This sweep ran on digits, the paper on CIFAR-10." in text
    assert "## Time: measured against the plan" in text and "measured / estimated" in text
