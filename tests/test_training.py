"""The training loop: it learns digits, it is deterministic under a seed, and resuming from a
checkpoint continues exactly where an uninterrupted run would be."""

from __future__ import annotations

import io

import pytest
import torch

from rsam_dist.config import load_config
from rsam_dist.training import EpochResult, TrainState, fit

TIMING_KEYS = {"images_per_sec", "epoch_seconds"}


def _config(*overrides: str):
    return load_config(None, ["data.name=digits", "train.device=cpu", *overrides])


class Recorder:
    def __init__(self):
        self.results: list[EpochResult] = []

    def __call__(self, result: EpochResult, state: TrainState) -> None:
        self.results.append(result)

    def comparable(self, index: int = -1) -> dict[str, float]:
        return {k: v for k, v in self.results[index].metrics.items() if k not in TIMING_KEYS}


def _checkpoint(state: TrainState) -> dict:
    """What a checkpoint file would hold, read back from bytes (so nothing aliases live tensors)."""
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_digits_training_beats_chance():
    recorder = Recorder()
    state = fit(_config("train.epochs=3"), recorder)
    metrics = [r.metrics for r in recorder.results]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["test_top1"] > 0.8, metrics[-1]  # chance is 0.1
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    # lr starts at 0.01 and decays by 0.95 after every epoch.
    assert [m["lr"] for m in metrics] == pytest.approx([0.01, 0.0095, 0.009025])
    for glimpse in range(1, 5):
        assert 0.0 <= metrics[-1][f"test_top1_glimpse_{glimpse}"] <= 1.0
    assert state.epoch == 2
    assert state.best_top1 == max(m["test_top1"] for m in metrics)
    # The probe masks of the fixed test images come with every epoch on rank 0.
    last = recorder.results[-1]
    assert last.masks.shape == (4, 8, 32, 32)
    assert last.probe_images.shape == (8, 3, 32, 32)


def test_fit_is_deterministic_under_a_seed():
    overrides = ("train.epochs=1", "data.limit_train=256", "data.limit_test=100", "train.mask_images=0")
    first, second = Recorder(), Recorder()
    state_a = fit(_config(*overrides), first)
    state_b = fit(_config(*overrides), second)
    assert first.results[0].metrics["train_loss"] == second.results[0].metrics["train_loss"]
    assert first.comparable() == second.comparable()
    weights_b = state_b.model.state_dict()
    for name, tensor in state_a.model.state_dict().items():
        assert torch.equal(tensor, weights_b[name]), name
    # ... and another seed is another run.
    third = Recorder()
    fit(_config(*overrides, "train.seed=1"), third)
    assert third.results[0].metrics["train_loss"] != first.results[0].metrics["train_loss"]


def test_resume_matches_an_uninterrupted_run():
    limits = ("data.limit_train=256", "data.limit_test=100", "train.mask_images=0")
    straight = Recorder()
    straight_state = fit(_config("train.epochs=2", *limits), straight)
    assert len(straight.results) == 2

    # A run stopped after epoch 1 of 2 (its checkpoint), then resumed to 2 epochs.
    first_part = fit(_config("train.epochs=1", *limits))
    checkpoint = _checkpoint(first_part)
    assert checkpoint["epoch"] == 0
    resumed = Recorder()
    resumed_state = fit(_config("train.epochs=2", *limits), resumed, resume_from=checkpoint)

    assert [r.epoch for r in resumed.results] == [1]  # only the second epoch ran
    assert resumed.comparable() == straight.comparable()
    assert resumed_state.best_top1 == straight_state.best_top1
    straight_weights = straight_state.model.state_dict()
    for name, tensor in resumed_state.model.state_dict().items():
        assert torch.equal(tensor, straight_weights[name]), name
