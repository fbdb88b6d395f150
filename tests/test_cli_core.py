"""The `rsam-dist` command line without Ray: validate, errors as one line + exit 2, and a local
training run that leaves a resumable run directory with TensorBoard files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.config import load_config
from rsam_dist.data import load_dataset
from rsam_dist.model import RSAM
from rsam_dist.runs import load_state, read_metrics

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


def _counted_top1(state_file: Path, config_file: Path) -> float:
    """Test top-1 of a checkpoint's model on the run's test split, counted here (mean-softmax vote)."""
    config = load_config(config_file)
    model = RSAM(config.model)
    model.load_state_dict(load_state(state_file)["model"])
    split = load_dataset(config.data).test
    with torch.no_grad():
        images, labels = split.batch(torch.arange(len(split)))
        votes = model.eval()(images).logits.softmax(-1).mean(0)
    return (votes.argmax(-1) == labels).float().mean().item()


@pytest.mark.slow
def test_local_train_then_resume(repo_root, tmp_path):
    storage = tmp_path / "runs"
    first = rsam(
        "train", "configs/digits.yaml", "--local", "--set", "train.epochs=1", "--set", "data.limit_train=256",
        "--set", "train.keep_checkpoints=1", "--set", f"train.storage={storage}",
        cwd=repo_root,
    )
    assert first.returncode == 0, first.stderr
    assert "epoch   1/1" in first.stdout
    run = _run_directory(first.stdout)
    assert run.parent == storage.resolve()
    assert (run / "config.yaml").is_file()
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
    # What TensorBoard shows is what the run printed and recorded, and it is the accuracy of the
    # checkpoint's model, counted here.
    [logged] = events.Scalars("test/top1")
    [recorded] = read_metrics(run)
    assert logged.step == 1 and logged.value == pytest.approx(recorded["test_top1"], rel=1e-6)
    assert f"final test top-1 {100 * recorded['test_top1']:.2f}%" in first.stdout
    counted = _counted_top1(run / "checkpoint_epoch=0000" / "state.pt", run / "config.yaml")
    assert recorded["test_top1"] == pytest.approx(counted, abs=1e-6)

    second = rsam("train", "--local", "--resume", run, "--set", "train.epochs=2", cwd=repo_root)
    assert second.returncode == 0, second.stderr
    assert "epoch   2/2" in second.stdout
    assert "epoch   1/2" not in second.stdout
    assert _run_directory(second.stdout) == run
    # keep_checkpoints=1: epoch 2's checkpoint replaced epoch 1's.
    assert sorted(p.name for p in run.glob("checkpoint_*")) == ["checkpoint_epoch=0001"]
    assert load_state(run / "checkpoint_epoch=0001" / "state.pt")["epoch"] == 1
    assert "epochs: 2" in (run / "config.yaml").read_text()
    # Both runs' event files together hold epoch 1 and epoch 2, once each.
    steps = [event.step for event in _event_accumulator(run / "tensorboard").Scalars("test/top1")]
    assert sorted(steps) == [1, 2]
    # best/ holds the first epoch with the best test top-1 (a tie keeps the earlier one).
    top1 = [metrics["test_top1"] for metrics in read_metrics(run)]
    best = load_state(run / "best" / "state.pt")
    assert best["epoch"] == top1.index(max(top1)) and best["last_metrics"]["test_top1"] == max(top1)


def test_a_failure_during_the_run_is_one_line_and_exit_1(monkeypatch, tmp_path, repo_root):
    import rsam_dist.local

    def broken(run, config, resume=False):
        raise RuntimeError("the disk controller\nreports a fault")

    monkeypatch.setattr(rsam_dist.local, "train_local", broken)
    monkeypatch.delenv("RSAM_DEBUG", raising=False)
    arguments = ["train", str(repo_root / "configs/digits.yaml"), "--local", "--set", f"train.storage={tmp_path}"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 1
    assert result.stderr == ("rsam-dist: run failed: RuntimeError: reports a fault "
                             "(RSAM_DEBUG=1 shows the trace)\n")
    traced = CliRunner().invoke(main, arguments, env={"RSAM_DEBUG": "1"})
    assert traced.exit_code == 1
    assert "Traceback (most recent call last)" in traced.stderr and "in broken" in traced.stderr


def test_a_diverging_run_is_one_line_and_exit_2_naming_the_cause(repo_root, tmp_path):
    # A loss that is no longer finite is the user's learning rate, not a crash: exit 2, one line.
    result = rsam("train", "configs/digits.yaml", "--local", "--smoke-test", "--set", "optim.lr=1e30",
                  "--set", f"train.storage={tmp_path}", cwd=repo_root)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        "rsam-dist: error: the training loss became nan within the epoch's first 2 steps (lr 1e+30): "
        "lower optim.lr; the checkpoints of earlier epochs are kept"]
