"""A sweep trial's TensorBoard run: named after the trial, its HParams row holding the searched values
and every final metric, and the custom-scalars layout, read back with TensorBoard's own reader."""

from __future__ import annotations

import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from rsam_dist.config import Config
from rsam_dist.tensorboard_log import CUSTOM_SCALARS, TensorBoardLogger
from rsam_dist.training import EpochResult


def _epoch(epoch: int, top1: float) -> EpochResult:
    metrics = {"epoch": epoch + 1, "train_loss": 2.0 - epoch, "test_top1": top1, "test_top1_glimpse_1": top1 - 0.1,
               "test_top1_glimpse_2": top1 - 0.05, "lr": 0.01, "images_per_sec": 500.0 + epoch, "epoch_seconds": 3.0}
    return EpochResult(epoch, metrics)


def test_a_trial_run_is_named_after_the_trial_and_its_hparams_row_holds_what_was_searched(tmp_path):
    config = Config.model_validate({"model": {"glimpses": 2}, "data": {"name": "digits"}})
    searched = {"model.glimpses": 2, "model.feedback": False, "train.seed": 1}
    # Another trial of this sweep has 3 glimpses: every trial's HParams lists 3 glimpse columns.
    logger = TensorBoardLogger(tmp_path / "tensorboard", config, run_name="glimpses=2,feedback=off,seed=1",
                               shown_hparams=searched, glimpse_columns=3)
    first, last = _epoch(0, 0.5), _epoch(1, 0.75)
    logger.log_epoch(first)
    logger.log_epoch(last)
    logger.log_hparams(last.metrics, best_top1=0.75)
    logger.close()

    run = tmp_path / "tensorboard" / "glimpses=2,feedback=off,seed=1"
    assert [p.parent for p in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")] == [run]
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()

    finals = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hparams/")}
    # float32 in the event file: 0.65 comes back as 0.6499999761...
    assert finals == pytest.approx({"hparams/final_test_top1": 0.75, "hparams/final_train_loss": 1.0,
                      "hparams/final_images_per_sec": 501.0, "hparams/final_test_top1_glimpse_1": 0.65,
                      "hparams/final_test_top1_glimpse_2": 0.70, "hparams/best_test_top1": 0.75}, rel=1e-6)

    hparams_content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams_content["_hparams_/session_start_info"])
    shown = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
             for key, value in start.session_start_info.hparams.items()}
    assert shown == {"model.glimpses": 2, "model.feedback": False, "train.seed": 1}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams_content["_hparams_/experiment"])
    assert {info.name.tag for info in experiment.experiment.metric_infos} == {
        *finals, "hparams/final_test_top1_glimpse_3"}  # a column, left empty for this trial

    assert "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
              for category in layout.category}
    assert charts == {category: {title: spec[1] for title, spec in charts_.items()}
                      for category, charts_ in CUSTOM_SCALARS.items()}
    per_glimpse = charts["test top-1"]["combined and per glimpse"]
    written = events.Tags()["scalars"]
    assert sorted(t for t in written if any(re.fullmatch(p.strip("^$"), t) for p in per_glimpse)) == [
        "test/top1", "test/top1_glimpse_1", "test/top1_glimpse_2"]


def test_a_run_of_its_own_keeps_its_folder_and_logs_its_whole_config(tmp_path):
    config = Config.model_validate({"data": {"name": "digits"}})
    logger = TensorBoardLogger(tmp_path, config)
    logger.log_epoch(_epoch(0, 0.5))
    logger.log_hparams(_epoch(0, 0.5).metrics, best_top1=0.5)
    logger.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert set(start.session_start_info.hparams) == {f"{section}.{key}" for section, values in config.to_dict().items()
                                                     for key in values}
