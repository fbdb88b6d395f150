"""rsam_dist.lean_trainer: Ray Train's default callbacks without the one that starts an idle Ray
Data actor. Building a trainer needs no running Ray, so these tests are not marked `ray` (that
mark stops the session's shared head); a real run's actors are checked in test_ray_train.py
(test_two_nodes_strict_spread)."""

from __future__ import annotations

from ray.train.torch import TorchTrainer

from rsam_dist.config import load_config
from rsam_dist.lean_trainer import LeanTorchTrainer
from rsam_dist.ray_train import build_trainer
from rsam_dist.runs import RunDir


def callback_names(trainer) -> list[str]:
    return [type(callback).__name__ for callback in trainer._create_default_callbacks()]


def test_a_run_leaves_out_only_ray_trains_datasets_callback(tmp_path):
    """rsam-dist hands Ray no Datasets, so Ray Train's DatasetsCallback would only start an idle
    DatasetManager actor for each run; every other callback Ray Train adds stays."""
    config = load_config(None, [f"train.storage={tmp_path}", "train.name=lean"])
    stock = callback_names(TorchTrainer(lambda: None))
    assert "DatasetsCallback" in stock
    ours = callback_names(build_trainer(config, RunDir.for_config(config)))
    assert ours == [name for name in stock if name != "DatasetsCallback"]


def test_a_trainer_given_datasets_keeps_every_callback():
    trainer = LeanTorchTrainer(lambda: None, datasets={"train": lambda: None})
    assert callback_names(trainer) == callback_names(TorchTrainer(lambda: None))
