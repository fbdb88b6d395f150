"""A `TorchTrainer` that starts no Ray Data actor for a run that was given no Ray Datasets.

Ray Train V2 (2.60) adds a `DatasetsCallback` to every run, and the callback starts a
`DatasetManager` actor whether or not the trainer has datasets: a Python process of its own that
imports Ray Train and Ray Data, about 3 CPU-seconds here. rsam-dist's workers slice tensors they
hold whole and never ask Ray for a dataset shard, so every run and every sweep trial paid for a
process it never used, while Train's other actors started beside it. Without it, on 2 cores,
`fit()` reached a no-op training function 1.7 s sooner on a warm Ray (14.7-15.6 s against
16.2-17.5 s, 22.5-24.7 against 28.3-30.1 CPU-seconds; four fits of each, arms alternated), and a
sweep of six 1-epoch trials, two at a time, took 157-165 s against 174-180 s (two of each).

The hook is private to Ray Train, so the change stays small and falls back to Ray's own callbacks:
if the callback class moves, the import fails and nothing is left out; if Ray stops calling the
method, it is simply not used. Given datasets, Ray's callbacks are kept as they are.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer

try:
    from ray.train.v2._internal.callbacks import DatasetsCallback
except ImportError:  # another Ray: keep its callbacks
    DatasetsCallback = None


class LeanTorchTrainer(TorchTrainer):
    def _create_default_callbacks(self) -> list[Any]:
        callbacks = super()._create_default_callbacks()
        if self.datasets or DatasetsCallback is None:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]
