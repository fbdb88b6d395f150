"""The `rsam-dist` command line without Ray: validate, errors as one line + exit 2, and a local
training run that leaves a resumable run directory with TensorBoard files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsam_dist.runs import load_state

_SCRIPT = Path(sys.executable).with_name("rsam-dist")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "rsam_dist.cli"]


def rsam(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RSAM_DEBUG", "RAY_ADDRESS")}
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_validate_prints_the_parameter_count(repo_root):
    result = rsam("validate", "configs/digits.yaml", cwd=repo_root)
    assert result.returncode == 0, result.stderr
    assert "trainable parameters: 1,340,958" in result.stdout
    assert "name: digits" in result.stdout


def test_validate_applies_set(repo_root):
    result = rsam("validate", "configs/digits.yaml", "--set", "model.attention_input=fc", cwd=repo_root)
    assert result.returncode == 0, result.stderr
    assert "trainable parameters: 2,113,370" in result.stdout


BAD_FILES = {
    "malformed": ("model:\n  glimpses: [4\ndata:\n  name: digits\n", "malformed YAML"),
    "misspelt": ("model:\n  glimpsez: 4\n", "model.glimpsez"),
}


@pytest.mark.parametrize("command", [["validate"], ["train", "--local"]], ids=["validate", "train"])
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_config_is_one_line_and_exit_2(tmp_path, kind, command):
    text, expected = BAD_FILES[kind]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = rsam(*command, path, "--set", f"train.storage={tmp_path / 'runs'}", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0]
    assert not (tmp_path / "runs").exists()


def _run_directory(stdout: str) -> Path:
    lines = [line for line in stdout.splitlines() if line.startswith("run directory: ")]
    assert len(lines) == 1, stdout
    return Path(lines[0].removeprefix("run directory: "))


def _event_accumulator(directory: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_local_train_then_resume(repo_root, tmp_path):
    storage = tmp_path / "runs"
    first = rsam(
        "train", "configs/digits.yaml", "--local",
        "--set", "train.epochs=1", "--set", "data.limit_train=256", "--set", f"train.storage={storage}",
        cwd=repo_root,
    )
    assert first.returncode == 0, first.stderr
    assert "epoch   1/1" in first.stdout
    run = _run_directory(first.stdout)
    assert run.parent == storage.resolve()
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoint_epoch=0000" / "state.pt").is_file()
    assert (run / "best" / "state.pt").is_file()
    assert load_state(run / "checkpoint_epoch=0000" / "state.pt")["epoch"] == 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    events = _event_accumulator(run / "tensorboard")
    tags = events.Tags()
    for tag in ("train/loss", "test/top1", "test/top1_glimpse_1", "test/top1_glimpse_4"):
        assert tag in tags["scalars"], tags
    assert "masks/figure1" in tags["images"], tags
    figure = events.Images("masks/figure1")[0]
    assert figure.width >= 5 * 32 * 4 and figure.height >= 4 * 32 * 4  # 4 probe rows of 4x tiles
    assert [event.step for event in events.Scalars("test/top1")] == [1]
    assert 0.0 <= events.Scalars("test/top1")[0].value <= 1.0

    second = rsam("train", "--local", "--resume", run, "--set", "train.epochs=2", cwd=repo_root)
    assert second.returncode == 0, second.stderr
    assert "epoch   2/2" in second.stdout
    assert "epoch   1/2" not in second.stdout
    assert _run_directory(second.stdout) == run
    assert (run / "checkpoint_epoch=0001" / "state.pt").is_file()
    assert load_state(run / "checkpoint_epoch=0001" / "state.pt")["epoch"] == 1
    assert "epochs: 2" in (run / "config.yaml").read_text()
    # Both runs' event files together hold epoch 1 and epoch 2, once each.
    steps = [event.step for event in _event_accumulator(run / "tensorboard").Scalars("test/top1")]
    assert sorted(steps) == [1, 2]
