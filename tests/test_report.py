"""`rsam-dist report`: figures and report.md from sweep directories written by the sweep's own
writer (rsam_dist.sweep.results), for an ablation grid, a glimpse sweep and an optuna search, and
from two real sweeps (the session's `grid_sweep` and `optuna_arms_sweep`).

Figures are checked by what they plot: each drawn `Figure` is kept (the module's `Figure` is
swapped for a subclass that remembers itself on `savefig`) and its lines and points are read back.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from matplotlib.figure import Figure
from PIL import Image

from rsam_dist.cli import main
from rsam_dist.config import Config
from rsam_dist.errors import UserError
from rsam_dist.metrics import glimpse_metric
from rsam_dist.report import figures as report_figures
from rsam_dist.report import write_report
from rsam_dist.runs import read_metrics
from rsam_dist.sweep import EpochRecord, TrialResult, load_sweep, load_sweep_results, summary_text
from rsam_dist.sweep.results import write_results, write_sweep_file

HONESTY = "not quoted here, not even as approximations"
GLIMPSES = 4


def _base(dataset: str, epochs: int) -> dict:
    base = Config().to_dict()
    base["data"]["name"] = dataset
    base["train"]["epochs"] = epochs
    return base


def _curve(final: float, epochs: int) -> list[float]:
    """A rising test top-1 curve that ends at `final`."""
    return [round(final * (0.6 + 0.4 * (e + 1) / epochs), 6) for e in range(epochs)]


def _epoch(epoch: int, top1: float) -> EpochRecord:
    metrics = {"test_top1": top1, "train_loss": 2.0 / epoch, "lr": 0.01 * 0.95 ** (epoch - 1),
               "images_per_sec": 900.0, "epoch_seconds": 55.0}
    metrics |= {glimpse_metric(i): top1 - 0.01 * (GLIMPSES - i) for i in range(1, GLIMPSES + 1)}
    return EpochRecord(epoch=epoch, metrics=metrics)


def make_sweep(directory: Path, *, name: str, search: dict, seeds: list[int], trials: list[dict],
               dataset: str = "cifar10", epochs: int = 3, algorithm: str = "grid",
               scheduler: str = "fifo") -> Path:
    """A sweep directory as `rsam-dist sweep` leaves it: the sweep file goes through `load_sweep`
    and the trials through the results writer, with no Ray and no training.

    Each trial: {"status", "params" (searched keys + train.seed), "curve" (test top-1 per epoch)};
    a trial that errored keeps its epochs in history.csv but reports no final values.
    """
    spec = {"name": name, "storage": str(directory.parent), "base": _base(dataset, epochs),
            "search": search, "seeds": seeds, "algorithm": algorithm, "scheduler": {"type": scheduler}}
    sweep_file = directory.parent / f"{name}.yaml"
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(sweep_file)
    assert sweep.directory == directory.resolve()
    results = []
    for index, trial in enumerate(trials):
        history = [_epoch(epoch, top1) for epoch, top1 in enumerate(trial["curve"], start=1)]
        scored = history and trial["status"] != "error"
        results.append(TrialResult(
            trial_id=f"t{index:03d}", status=trial["status"], epochs_run=len(history), epochs_planned=epochs,
            params=trial["params"], final=history[-1].metrics if scored else {},
            best_test_top1=max(trial["curve"]) if scored else None,
            run_dir=str(directory / "trials" / f"t{index:03d}"), history=history,
        ))
    write_sweep_file(sweep)
    write_results(sweep, results)
    return directory


def assert_png(path: Path, figure: Figure) -> None:
    """The file is the PNG of `figure`, at its size."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = figure.get_size_inches() * figure.dpi
        assert image.size == (round(width), round(height))


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Figure]:
    """Every figure the report saves, by file name, to read its artists back."""
    saved: dict[str, Figure] = {}

    class RecordedFigure(Figure):
        def savefig(self, path, *args, **kwargs):
            saved[Path(path).name] = self
            return super().savefig(path, *args, **kwargs)

    monkeypatch.setattr(report_figures, "Figure", RecordedFigure)
    return saved


def lines(figure: Figure, axes_index: int = 0) -> dict[str, tuple[list[float], list[float]]]:
    """The labelled lines of an axes: label -> (x, y)."""
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in figure.axes[axes_index].get_lines() if not line.get_label().startswith("_")}


def errorbars(figure: Figure) -> dict[str, tuple[list[float], list[float]]]:
    """The labelled error-bar plots of the first axes: label -> (x, y) of their data line."""
    return {container.get_label(): (list(container.lines[0].get_xdata()), list(container.lines[0].get_ydata()))
            for container in figure.axes[0].containers}


def points(figure: Figure, axes_index: int = 0) -> dict[str, list[tuple[float, float]]]:
    """The labelled scatter collections of an axes: label -> [(x, y), ...]."""
    return {collection.get_label(): [tuple(xy) for xy in collection.get_offsets().tolist()]
            for collection in figure.axes[axes_index].collections if not collection.get_label().startswith("_")}


def assert_same_points(got: list[tuple[float, float]], expected: list[tuple[float, float]]) -> None:
    assert len(got) == len(expected)
    assert [v for xy in sorted(got) for v in xy] == pytest.approx([v for xy in sorted(expected) for v in xy])


def mean_curve(*curves: list[float]) -> list[float]:
    return [statistics.fmean(100 * value for value in epoch) for epoch in zip(*curves, strict=True)]


def pct(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f}%"


# ---------------------------------------------------------------------------------------------
# (1) The ablation of Figure 3: {feedback on, off} x {down-sample, fully-connected}, two seeds

ABLATION_FINALS = {  # (feedback, attention_input) -> final test top-1 of seeds 0 and 1
    (True, "downsample"): [0.62, 0.64],
    (True, "fc"): [0.58, 0.60],
    (False, "downsample"): [0.57, 0.59],
    (False, "fc"): [0.50, 0.54],
}


@pytest.fixture
def ablation_dir(tmp_path: Path) -> Path:
    trials = [
        {"status": "completed", "curve": _curve(finals[seed], 3),
         "params": {"model.feedback": feedback, "model.attention_input": source, "train.seed": seed}}
        for (feedback, source), finals in ABLATION_FINALS.items() for seed in (0, 1)
    ]
    search = {"model.feedback": {"grid": [True, False]}, "model.attention_input": {"grid": ["downsample", "fc"]}}
    return make_sweep(tmp_path / "ablation", name="ablation", search=search, seeds=[0, 1], trials=trials)


def test_ablation_report(ablation_dir: Path, drawn):
    written = write_report(ablation_dir)
    assert [p.name for p in written] == ["fig_top1_per_epoch.png", "report.md", "report.html"]  # glimpses fixed
    assert all(p.is_file() for p in written)
    figure = drawn["fig_top1_per_epoch.png"]
    assert_png(ablation_dir / "fig_top1_per_epoch.png", figure)
    # One line per arm: the mean over its two seeds of each epoch's test top-1, in percent.
    drawn_lines = lines(figure)
    labels = {(True, "downsample"): "feedback on, down-sample", (True, "fc"): "feedback on, fully-connected",
              (False, "downsample"): "feedback off, down-sample", (False, "fc"): "feedback off, fully-connected"}
    assert list(drawn_lines) == [f"{label} (n=2)" for label in labels.values()]
    for arm, finals in ABLATION_FINALS.items():
        x, y = drawn_lines[f"{labels[arm]} (n=2)"]
        assert x == [1, 2, 3]
        assert y == pytest.approx(mean_curve(*(_curve(final, 3) for final in finals)))
    bands = [c for c in figure.axes[0].collections if c.get_paths()]
    assert len(bands) == 4  # the min-max band of each arm's two seeds
    text = (ablation_dir / "report.md").read_text()

    assert "# RSAM sweep report: ablation" in text
    assert "**cifar10**; 3 epochs planned" in text
    assert "8 trials: 8 completed, 0 stopped early, 0 error, 0 pending" in text
    # One row per arm, in the sweep's order, with the numbers computed from results.csv.
    positions = []
    for arm, finals in ABLATION_FINALS.items():
        row = (f"| {labels[arm]} | 2 | 0 | {pct(finals)} | {100 * statistics.stdev(finals):.2f} | "
               f"{100 * max(finals):.2f}% | 3 |")
        assert row in text, row
        positions.append(text.index(row))
    assert positions == sorted(positions)
    assert "| feedback on, down-sample | 2 | 0 | 63.00% | 1.41 | 64.00% | 3 |" in text
    # The best trial is seed 1 of feedback + down-sample.
    assert "Trial `t001`" in text and "**64.00%** after 3 epochs" in text
    # The comparison with the paper: its one number, this run's in the same setting, the notes.
    assert "| 64.95% | 63.00% ± 1.41 pp final, over 2 completed trial(s), 3 epochs" in text
    assert "| not quoted (a figure, see the paper) |" in text
    assert "our copy" not in text and "Recurrent Soft Attention Model for Common Object Recognition" in text
    assert HONESTY in text
    assert "These trials ran 3 epochs, not the paper's 20." in text
    assert "does not apply" not in text
    assert "![Test top-1 per epoch for each arm" in text and "(fig_top1_per_epoch.png)" in text
    assert f"tensorboard --logdir {ablation_dir}" in text


def test_cli_prints_the_paths(ablation_dir: Path):
    result = CliRunner().invoke(main, ["report", str(ablation_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(ablation_dir / name) for name in
                                     ("fig_top1_per_epoch.png", "report.md", "report.html")]


def test_results_read_back_typed(ablation_dir: Path):
    results = load_sweep_results(ablation_dir)
    assert [t.trial_id for t in results.trials] == [f"t{i:03d}" for i in range(8)]
    first = results.trials[0]
    # Each searched key comes back as the training config types it, not as the CSV's text.
    assert first.params == {"model.feedback": True, "model.attention_input": "downsample", "train.seed": 0}
    assert type(first.params["train.seed"]) is int and type(first.params["model.feedback"]) is bool
    assert first.final["test_top1"] == 0.62 and first.final[glimpse_metric(1)] == pytest.approx(0.59)
    assert [record.epoch for record in first.history] == [1, 2, 3]
    assert first.history[-1].metrics == first.final and first.best_test_top1 == 0.62
    assert results.sweep.spec.search["model.feedback"].listed == [True, False]
    # The writer's files are whole: no temporary file is left beside them.
    assert sorted(path.name for path in ablation_dir.iterdir()) == [
        "best_config.yaml", "history.csv", "results.csv", "sweep.yaml"]
    assert (ablation_dir / "best_config.yaml").read_text().startswith(
        "# Best trial t001 of sweep ablation: final test_top1 0.6400\n")
    assert summary_text(results) == (
        f"8 trials: 8 completed\nBest trial t001 of sweep ablation: final test_top1 0.6400\n"
        f"results: {ablation_dir / 'results.csv'}\ntensorboard --logdir {ablation_dir}")


def test_a_cell_of_the_wrong_type_is_a_user_error(ablation_dir: Path):
    path = ablation_dir / "results.csv"
    path.write_text(path.read_text().replace(",True,downsample,", ",maybe,downsample,", 1))
    with pytest.raises(UserError, match=r"results.csv: line 2, model.feedback: .*'maybe'"):
        write_report(ablation_dir)


# ---------------------------------------------------------------------------------------------
# (2) The glimpse count of Figure 4, with a trial ASHA stopped and one that failed


def test_glimpse_sweep_report(tmp_path: Path, drawn):
    finals = {(1, 0): 0.50, (1, 1): 0.52, (2, 0): 0.58, (3, 0): 0.62, (4, 0): 0.64, (4, 1): 0.66}
    trials = [{"status": "completed", "curve": _curve(top1, 20), "params": {"model.glimpses": g, "train.seed": s}}
              for (g, s), top1 in finals.items()]
    trials.insert(3, {"status": "stopped_early", "curve": _curve(0.40, 20)[:2],
                      "params": {"model.glimpses": 2, "train.seed": 1}})
    trials.insert(5, {"status": "error", "curve": [0.2], "params": {"model.glimpses": 3, "train.seed": 1}})
    directory = make_sweep(tmp_path / "glimpses", name="glimpses", search={"model.glimpses": {"grid": [1, 2, 3, 4]}},
                           seeds=[0, 1], trials=trials, epochs=20, scheduler="asha")

    written = write_report(directory)
    assert [p.name for p in written] == ["fig_top1_per_epoch.png", "fig_top1_vs_glimpses.png", "report.md",
                                         "report.html"]
    for path in written[:2]:
        assert_png(path, drawn[path.name])
    # Figure 4: the mean final top-1 of each glimpse count's completed trials (the stopped and the
    # failed trial left out), each trial a dot, and the paper's one number at 4 glimpses.
    assert errorbars(drawn["fig_top1_vs_glimpses.png"]) == {
        "this run: mean, 95% CI of the mean (dots: trials)": ([1, 2, 3, 4], pytest.approx([51.0, 58.0, 62.0, 65.0]))}
    assert lines(drawn["fig_top1_vs_glimpses.png"])["paper: 64.95% at 4 glimpses (20 epochs)"] == (
        [4], [pytest.approx(64.95)])
    dots = sorted((x, round(y, 6)) for line in drawn["fig_top1_vs_glimpses.png"].axes[0].get_lines()
                  if line.get_marker() == "." for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True))
    assert dots == [(1, 50.0), (1, 52.0), (2, 58.0), (3, 62.0), (4, 64.0), (4, 66.0)]
    # Figure 3: the stopped trial drawn for its two epochs, dashed, in its arm's colour.
    per_epoch = drawn["fig_top1_per_epoch.png"].axes[0].get_lines()
    dashed = [line for line in per_epoch if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx([100 * v for v in _curve(0.40, 20)[:2]])
    assert lines(drawn["fig_top1_per_epoch.png"])["glimpses=4 (n=2)"][1] == pytest.approx(
        mean_curve(_curve(0.64, 20), _curve(0.66, 20)))
    text = (directory / "report.md").read_text()

    assert "8 trials: 6 completed, 1 stopped early, 1 error, 0 pending" in text
    assert "Left out of every figure and average: t005 (error)." in text
    # The stopped trial (40% after 2 epochs) is not in glimpses=2's final mean; the failed one not in 3's.
    assert "| glimpses=2 | 1 | 1 | 58.00% | — | 58.00% | 2–20 |" in text
    assert "| glimpses=3 | 1 | 0 | 62.00% | — | 62.00% | 20 |" in text
    assert "| glimpses=4 | 2 | 0 | 65.00% | 1.41 | 66.00% | 20 |" in text
    assert "left out of the final columns" in text
    assert "| 64.95% | 65.00% ± 1.41 pp final, over 2 completed trial(s), 20 epochs" in text
    assert "not the paper's 20" not in text
    assert "`fig_top1_vs_glimpses.png`" in text and "(fig_top1_vs_glimpses.png)" in text
    assert HONESTY in text


# ---------------------------------------------------------------------------------------------
# (3) An optuna search over continuous keys, on digits (where the paper's number does not apply)


@pytest.mark.parametrize("with_choice", [True, False], ids=["choice+continuous", "continuous-only"])
def test_optuna_search_report(tmp_path: Path, with_choice: bool, drawn):
    draws = [(0.002, 0.85, True, 0.91), (0.03, 0.95, False, 0.97), (0.01, 0.90, True, 0.99),
             (0.08, 0.82, False, 0.88), (0.005, 0.97, True, 0.95)]
    trials = []
    for lr, momentum, feedback, top1 in draws:
        params = {"optim.lr": lr, "optim.momentum": momentum, "train.seed": 0}
        if with_choice:
            params["model.feedback"] = feedback
        trials.append({"status": "completed", "curve": _curve(top1, 4), "params": params})
    trials.append({"status": "stopped_early", "curve": _curve(0.5, 4)[:1],
                   "params": {**trials[0]["params"], "optim.lr": 0.09}})
    search = {"optim.lr": {"loguniform": [0.001, 0.1]}, "optim.momentum": {"uniform": [0.8, 0.99]}}
    if with_choice:
        search["model.feedback"] = {"choice": [True, False]}
    directory = make_sweep(tmp_path / "hparams", name="hparams", search=search, seeds=[0], trials=trials,
                           dataset="digits", epochs=4, algorithm="optuna", scheduler="asha")

    written = write_report(directory)
    assert [p.name for p in written] == ["fig_top1_per_epoch.png", "fig_search.png", "report.md", "report.html"]
    for path in written[:2]:
        assert_png(path, drawn[path.name])
    # The search figure: final top-1 against each continuous key, per trial; the best starred.
    search = drawn["fig_search.png"]
    assert [axes.get_xlabel() for axes in search.axes] == ["optim.lr", "optim.momentum"]
    assert search.axes[0].get_xscale() == "log" and search.axes[1].get_xscale() == "linear"
    for index, key in enumerate(("lr", "momentum")):
        drawn_points = points(search, index)
        column = 0 if key == "lr" else 1
        assert_same_points(drawn_points["completed"], [(d[column], 100 * d[3]) for d in draws])
        stopped_value = 0.09 if key == "lr" else draws[0][1]
        assert drawn_points["stopped early (fewer epochs)"] == [pytest.approx((stopped_value, 35.0))]
        assert drawn_points["best (trial t002)"] == [pytest.approx((draws[2][column], 99.0))]
    text = (directory / "report.md").read_text()

    assert "**digits**" in text and "Search algorithm: optuna; scheduler: asha" in text
    assert "| `optim.lr` | loguniform [0.001, 0.1] |" in text
    if with_choice:
        assert f"| feedback on | 3 | 1 | {pct([0.91, 0.99, 0.95])} |" in text
        assert f"| feedback off | 2 | 0 | {pct([0.97, 0.88])} |" in text
    else:
        assert f"| all trials | 5 | 1 | {pct([d[3] for d in draws])} |" in text
    assert "Trial `t002`" in text and "**99.00%**" in text and "`optim.lr=0.01`" in text
    lrs = [trial.params["optim.lr"] for trial in load_sweep_results(directory).trials]
    assert lrs == [0.002, 0.03, 0.01, 0.08, 0.005, 0.09]  # floats, exactly as written
    assert "Top 5 completed trials:" in text
    assert "not comparable: this sweep ran on digits" in text
    assert "the comparison with the paper's 64.95% does not apply" in text
    assert HONESTY in text
    assert "(fig_search.png)" in text


def test_a_sweep_where_nothing_finished_still_reports(tmp_path: Path):
    trials = [{"status": "error", "curve": [], "params": {"model.glimpses": 1, "train.seed": 0}},
              {"status": "pending", "curve": [], "params": {"model.glimpses": 2, "train.seed": 0}}]
    directory = make_sweep(tmp_path / "failed", name="failed", search={"model.glimpses": {"grid": [1, 2]}},
                           seeds=[0], trials=trials)
    assert [p.name for p in write_report(directory)] == ["report.md", "report.html"]
    text = (directory / "report.md").read_text()
    assert "2 trials: 0 completed, 0 stopped early, 1 error, 1 pending" in text
    assert "no completed trial in this setting" in text and HONESTY in text
    assert ".png" not in text


# ---------------------------------------------------------------------------------------------
# Bad input: one-line UserErrors


def test_missing_or_empty_results_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="no results.csv: run `rsam-dist sweep ...` first"):
        write_report(tmp_path)
    (tmp_path / "results.csv").write_text("trial_id,status,epochs_run,epochs_planned,train.seed\n")
    with pytest.raises(UserError, match="results.csv has no trials"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        write_report(tmp_path / "absent")


def test_report_html_is_self_contained(ablation_dir):
    """report.html holds the report's text and every figure inline: it opens from disk, no server."""
    import base64

    write_report(ablation_dir)
    page = (ablation_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<table>" in page
    figure = (ablation_dir / "fig_top1_per_epoch.png").read_bytes()
    assert f'src="data:image/png;base64,{base64.b64encode(figure).decode()}"' in page
    assert 'src="fig_' not in page  # no link left to a file beside it


# ---------------------------------------------------------------------------------------------
# Real sweeps: the report of what `rsam-dist sweep` wrote, checked against each trial's own record


def _records(directory: Path) -> dict[str, list[dict[str, float]]]:
    """Each trial's own metrics.jsonl, by trial id (where the report's numbers must come from)."""
    return {trial.trial_id: read_metrics(Path(trial.run_dir)) for trial in load_sweep_results(directory).trials}


def test_report_of_a_real_grid_sweep(grid_sweep, drawn):
    directory = grid_sweep.directory
    written = write_report(directory)
    assert [p.name for p in written] == ["fig_top1_per_epoch.png", "fig_top1_vs_glimpses.png", "report.md",
                                         "report.html"]
    text = (directory / "report.md").read_text()
    assert "2 trials: 2 completed, 0 stopped early, 0 error, 0 pending" in text
    records = _records(directory)
    by_glimpses = {trial.params["model.glimpses"]: records[trial.trial_id]
                   for trial in load_sweep_results(directory).trials}
    for glimpses, epochs in sorted(by_glimpses.items()):
        final = epochs[-1]["test_top1"]
        assert f"| glimpses={glimpses} | 1 | 0 | {pct([final])} | — | {pct([final])} | 2 |" in text
        x, y = lines(drawn["fig_top1_per_epoch.png"])[f"glimpses={glimpses}"]
        assert (x, y) == ([1, 2], pytest.approx([100 * m["test_top1"] for m in epochs]))
    assert errorbars(drawn["fig_top1_vs_glimpses.png"])["this run: mean, 95% CI of the mean (dots: trials)"] == (
        [1, 2], pytest.approx([100 * by_glimpses[g][-1]["test_top1"] for g in (1, 2)]))
    best = max(by_glimpses.values(), key=lambda epochs: epochs[-1]["test_top1"])
    assert f"**{pct([best[-1]['test_top1']])}** after 2 epochs" in text
    assert "the comparison with the paper's 64.95% does not apply" in text and HONESTY in text


@pytest.mark.slow
def test_report_of_a_real_optuna_sweep_with_arms(optuna_arms_sweep, drawn):
    directory = optuna_arms_sweep.directory
    written = write_report(directory)
    assert [p.name for p in written] == ["fig_top1_per_epoch.png", "fig_search.png", "report.md", "report.html"]
    text = (directory / "report.md").read_text()
    trials = load_sweep_results(directory).trials
    records = _records(directory)
    for feedback, label in ((True, "feedback on"), (False, "feedback off")):
        finals = [records[t.trial_id][-1]["test_top1"] for t in trials if t.params["model.feedback"] is feedback]
        assert len(finals) == 2
        row = (f"| {label} | 2 | 0 | {pct(finals)} | {100 * statistics.stdev(finals):.2f} | "
               f"{100 * max(finals):.2f}% | 1 |")
        assert row in text, row
    drawn_points = points(drawn["fig_search.png"])
    expected = [(t.params["optim.lr"], 100 * records[t.trial_id][-1]["test_top1"]) for t in trials]
    assert_same_points(drawn_points["completed"], expected)
