"""The metric table: one row per metric, the per-glimpse family, the epoch line with its ETA."""

from __future__ import annotations

from rsam_dist.metrics import format_duration, format_epoch_line, glimpse_of, lookup, optimisable_metrics

EPOCH = dict(epoch=3, train_loss=1.25, test_top1=0.5, test_top1_glimpse_1=0.4, test_top1_glimpse_2=0.45,
             lr=0.01, images_per_sec=500.0, epoch_seconds=12.5)


def test_per_glimpse_metrics_are_one_family():
    assert lookup("test_top1_glimpse_12").tag == "test/top1_glimpse_12"
    assert lookup("test_top1_glimpse_12").fraction
    assert glimpse_of("test_top1_glimpse_3") == 3
    assert glimpse_of("test_top1_glimpse_x") is None
    assert lookup("no_such_metric") is None


def test_sweeps_may_optimise_only_reported_metrics():
    assert optimisable_metrics(2) == ["train_loss", "test_top1", "test_top1_glimpse_1", "test_top1_glimpse_2"]


def test_epoch_line_says_how_far_and_when_it_ends():
    line = format_epoch_line(EPOCH, 20)
    assert line.startswith("epoch   3/20  loss 1.2500  test top-1 50.00%  (per glimpse 40.0 45.0)")
    assert line.endswith("12.5 s  ETA 3m32s")  # 17 epochs left at 12.5 s each
    assert format_epoch_line({**EPOCH, "epoch": 20}, 20).endswith("done")


def test_durations_read_as_a_person_plans():
    assert [format_duration(s) for s in (0, 45, 61, 3599, 3700)] == ["0s", "45s", "1m01s", "59m59s", "1h01m"]
