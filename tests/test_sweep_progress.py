"""The sweep's progress line (trials done / running / total, ETA) and each trial's label, on a
fake clock: the arithmetic `rsam_dist.sweep.progress` promises, without Ray."""

from __future__ import annotations

import pytest

from rsam_dist.sweep.config import trial_label
from rsam_dist.sweep.progress import SweepProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_eta_before_an_epoch_then_each_running_trials_pace():
    clock = Clock()
    progress = SweepProgress(total=4, epochs=10, concurrency=2, clock=clock)
    progress.started("a")
    progress.started("b")
    assert progress.summary() == "trials 0/4 done, 2 running, ETA after the first epoch"
    clock.now += 30
    progress.epoch("a", 1)  # a: 30 s per epoch, 300 s in all
    progress.epoch("b", 1)
    # rests 270 + 270, two more trials of 300 s each: (540 + 600) / 2 = 570 s
    assert progress.eta_seconds(done=0) == pytest.approx(570)
    assert progress.summary() == "trials 0/4 done, 2 running, ETA 9m30s"


def test_finished_trials_set_the_typical_length():
    clock = Clock()
    progress = SweepProgress(total=3, epochs=2, concurrency=1, clock=clock)
    progress.started("a")
    clock.now += 50
    progress.epoch("a", 1)
    clock.now += 50
    progress.epoch("a", 2)
    progress.finished("a")
    progress.started("b")
    # b has no epoch yet: it and the one waiting take a's 100 s each, one at a time.
    assert progress.eta_seconds(progress.done()) == pytest.approx(200)
    assert progress.summary() == "trials 1/3 done, 1 running, ETA 3m20s"


def test_eta_never_below_the_longest_running_rest():
    clock = Clock()
    progress = SweepProgress(total=2, epochs=100, concurrency=8, clock=clock)
    progress.started("a")
    progress.started("b")
    clock.now += 10
    progress.epoch("a", 1)  # a: 1000 s in all, 990 s to go
    progress.finished("b")
    assert progress.eta_seconds(progress.done()) == pytest.approx(990)


def test_a_resumed_trial_is_paced_from_its_own_epochs_only():
    clock = Clock()
    progress = SweepProgress(total=1, epochs=10, concurrency=1, clock=clock)
    progress.started("a")
    clock.now += 100  # restoring: no epoch ran yet
    progress.epoch("a", 6)  # resumed from epoch 5's checkpoint
    assert progress.eta_seconds(0) is None
    clock.now += 20
    progress.epoch("a", 7)  # 20 s per epoch from here: 3 left
    assert progress.eta_seconds(0) == pytest.approx(60)


def test_done_counts_earlier_experiments_and_trials_restored_finished():
    progress = SweepProgress(total=6, epochs=1, concurrency=1, clock=Clock())
    progress.finished("x")
    progress.end_experiment(finished_there=3)  # the first grid point's 3 trials
    progress.finished("y")
    assert progress.done(already_finished=["y", "z"]) == 5
    progress.finished("z")
    progress.finished("w")
    assert progress.summary(["y", "z"]) == "trials 6/6 done, 0 running, sweep done"


def test_trial_label_names_what_the_trial_is():
    keys = ["model.glimpses", "model.feedback", "optim.lr", "train.seed"]
    params = {"model.glimpses": 4, "model.feedback": False, "optim.lr": 0.0123456, "train.seed": 1}
    assert trial_label(params, keys) == "glimpses=4,feedback=off,lr=0.0123,seed=1"
    assert trial_label({"data.root": "a b/c"}, ["data.root"]) == "root=a_b_c"
