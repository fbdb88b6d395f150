"""Replication statistics against numbers computed by hand (no Ray): the arm's 95% interval, Welch's
test, the verdict against the paper, the between-arm sentence, `seeds: N`, and the report's lines.

The expected figures were computed independently of scipy: means and standard deviations by hand,
Student's t quantiles and tail areas by Simpson integration of the t density (pure Python):
t(0.975; 2) = 4.302653, t(0.975; 8) = 2.306004, P(|T8| > 4) = 0.0039498,
and for the unequal-variance case df = 3.532847, t(0.975; df) = 2.927405, P(|T| > 7.385489) = 0.0028734.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.config import Config
from rsam_dist.errors import UserError
from rsam_dist.report import write_report
from rsam_dist.report.stats import arm_differences, arm_stats, paper_comparison, welch
from rsam_dist.sweep import EpochRecord, TrialResult, load_sweep, load_sweep_results
from rsam_dist.sweep.results import write_results, write_sweep_file

HEADLINE = {"model.glimpses": 4, "model.feedback": True, "model.attention_input": "downsample"}


# --- the numbers ---------------------------------------------------------------------------------


def test_arm_interval_is_students_t_of_the_mean():
    # mean 0.62; deviations -0.02, 0, 0.02 -> sample variance 0.0008 / 2 = 0.0004, std 0.02;
    # half width t(0.975; 2) * 0.02 / sqrt(3) = 4.302653 * 0.011547 = 0.049683
    stats = arm_stats([0.60, 0.62, 0.64])
    assert stats.n == 3
    assert stats.mean == pytest.approx(0.62)
    assert stats.std == pytest.approx(0.02)
    assert stats.ci_low == pytest.approx(0.570317, abs=1e-6)
    assert stats.ci_high == pytest.approx(0.669683, abs=1e-6)
    assert arm_stats([0.5]).ci_low is None and arm_stats([0.5]).std is None
    assert arm_stats([]).mean is None
    same = arm_stats([0.7, 0.7, 0.7])
    assert same.std == 0.0 and same.ci_low == same.ci_high == same.mean == pytest.approx(0.7)


def test_welch_with_equal_variances():
    # means 0.65 and 0.61, both sample variances 0.00025 (sum of squares 0.001 over 4);
    # se = sqrt(0.00025/5 + 0.00025/5) = 0.01, t = 4.0, Welch df = 8 (equal n and variances);
    # CI 0.04 +- 2.306004 * 0.01; p = P(|T8| > 4) = 0.0039498
    difference, low, high, p = welch([0.66, 0.64, 0.65, 0.67, 0.63], [0.60, 0.62, 0.61, 0.63, 0.59])
    assert difference == pytest.approx(0.04)
    assert low == pytest.approx(0.016940, abs=1e-6)
    assert high == pytest.approx(0.063060, abs=1e-6)
    assert p == pytest.approx(0.0039498, abs=1e-6)


def test_welch_with_unequal_variances_and_sizes():
    # a: mean 0.72, variance 0.0004 (n 3); b: mean 0.62, variance 0.00025 (n 5)
    # se^2 = 0.0004/3 + 0.00025/5 = 1.833333e-4, se = 0.0135401, t = 0.10 / se = 7.385489
    # df = se^4 / ((0.0004/3)^2 / 2 + (0.00025/5)^2 / 4) = 3.532847
    difference, low, high, p = welch([0.70, 0.72, 0.74], [0.60, 0.61, 0.62, 0.63, 0.64])
    assert difference == pytest.approx(0.10)
    assert low == pytest.approx(0.060363, abs=1e-5)
    assert high == pytest.approx(0.139637, abs=1e-5)
    assert p == pytest.approx(0.0028734, abs=1e-6)


def test_welch_is_undefined_without_variation_or_a_second_value():
    assert welch([0.5, 0.5, 0.5], [0.4, 0.4, 0.4]) == (pytest.approx(0.1), None, None, None)
    assert welch([0.5], [0.4, 0.41])[1:] == (None, None, None)


# --- sweeps written as `rsam-dist sweep` leaves them (no Ray) ----------------------------------------


def write_sweep(directory: Path, *, search: dict, trials: list[tuple[dict, float]], dataset: str = "cifar10",
                epochs: int = 20, seeds: list[int] | int = 5) -> Path:
    """A finished sweep: `trials` is (searched values + train.seed, final test top-1) per trial."""
    base = Config().to_dict()
    base["data"]["name"] = dataset
    base["train"]["epochs"] = epochs
    spec = {"name": directory.name, "storage": str(directory.parent), "base": base, "search": search,
            "seeds": seeds, "algorithm": "grid"}
    sweep_file = directory.parent / f"{directory.name}.yaml"
    sweep_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(sweep_file)
    results = []
    for index, (params, top1) in enumerate(trials):
        history = [EpochRecord(epoch=e, metrics={"test_top1": top1 * e / epochs, "train_loss": 1.0})
                   for e in range(1, epochs + 1)]
        results.append(TrialResult(trial_id=f"t{index}", status="completed", epochs_run=epochs,
                                   epochs_planned=epochs, params=params, final=history[-1].metrics,
                                   best_test_top1=top1, run_dir="", history=history, seconds=100.0 + index,
                                   estimated_seconds=90.0))
    write_sweep_file(sweep)
    write_results(sweep, results)
    return directory


def headline_sweep(tmp_path: Path, values: list[float], **kwargs) -> Path:
    trials = [({"train.seed": seed}, value) for seed, value in enumerate(values)]
    return write_sweep(tmp_path / "headline", search={}, trials=trials, seeds=len(values), **kwargs)


@pytest.mark.parametrize(("values", "verdict", "words"), [
    # mean 0.6495 exactly, interval around it
    ([0.6395, 0.6495, 0.6595], "reproduced", "lies within"),
    # mean 0.70, interval 0.70 +- 4.302653 * 0.01 / sqrt(3) = [0.6752, 0.7248]: above the paper
    ([0.69, 0.70, 0.71], "reproduced", "is above"),
    # mean 0.60, interval [0.5752, 0.6248]: below the paper
    ([0.59, 0.60, 0.61], "not reproduced", "lies below"),
    # two seeds: no verdict
    ([0.70, 0.71], "too thin", "a verdict needs at least 3 seeds"),
])
def test_verdict_against_the_paper(tmp_path, values, verdict, words):
    comparison = paper_comparison(load_sweep_results(headline_sweep(tmp_path, values)))
    assert comparison.verdict == verdict
    assert words in comparison.reason


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"dataset": "digits"}, "this sweep ran on digits, the paper on CIFAR-10"),
    ({"epochs": 6}, "these trials ran 6 epochs, the paper 20"),
])
def test_other_data_or_settings_are_not_comparable(tmp_path, kwargs, why):
    comparison = paper_comparison(load_sweep_results(headline_sweep(tmp_path, [0.69, 0.70, 0.71], **kwargs)))
    assert comparison.verdict == "not comparable"
    assert why in comparison.reason


def test_between_arm_sentence_in_plain_words(tmp_path):
    on = [0.66, 0.64, 0.65, 0.67, 0.63]
    off = [0.60, 0.62, 0.61, 0.63, 0.59]
    trials = [({"model.feedback": True, "train.seed": s}, v) for s, v in enumerate(on)]
    trials += [({"model.feedback": False, "train.seed": s}, v) for s, v in enumerate(off)]
    directory = write_sweep(tmp_path / "feedback", search={"model.feedback": {"grid": [True, False]}},
                            trials=trials)
    [difference] = arm_differences(load_sweep_results(directory))
    # the numbers of test_welch_with_equal_variances, in points
    assert difference.sentence == ("feedback adds 4.0 points, 95% CI 1.7 to 6.3, p = 0.0039, n = 5 per arm "
                                   "(the interval excludes zero)")


def test_glimpse_counts_compare_with_the_first_and_costs_read_as_costs(tmp_path):
    values = {1: [0.50, 0.52, 0.51], 2: [0.49, 0.52, 0.50], 4: [0.60, 0.61, 0.62]}
    trials = [({"model.glimpses": g, "train.seed": s}, v) for g, vs in values.items() for s, v in enumerate(vs)]
    directory = write_sweep(tmp_path / "glimpses", search={"model.glimpses": {"grid": [1, 2, 4]}}, trials=trials,
                            seeds=3)
    sentences = [d.sentence for d in arm_differences(load_sweep_results(directory))]
    assert len(sentences) == 2
    assert sentences[0].startswith("2 glimpses instead of 1 cost 0.7 points, 95% CI")
    assert sentences[0].endswith("n = 3 per arm (the interval includes zero: this could be noise)")
    assert sentences[1].startswith("4 glimpses instead of 1 add 10.0 points, 95% CI")


def test_report_shows_intervals_verdict_and_thin_evidence(tmp_path):
    on = [0.66, 0.64]  # two seeds per arm: intervals, but no verdict and no test
    off = [0.60, 0.62]
    trials = [({"model.feedback": True, "train.seed": s}, v) for s, v in enumerate(on)]
    trials += [({"model.feedback": False, "train.seed": s}, v) for s, v in enumerate(off)]
    directory = write_sweep(tmp_path / "thin", search={"model.feedback": {"grid": [True, False]}}, trials=trials,
                            seeds=2, epochs=20)
    write_report(directory)
    text = (directory / "report.md").read_text()
    assert "95% CI of the mean" in text
    # mean 0.65, std 0.014142, half width t(0.975; 1) = 12.7062 * 0.01 = 0.127062
    assert "52.29% to 77.71%" in text
    assert "No difference is tested: no arm has 3 completed seeds" in text
    assert "- Feedback adds 4.0 points, n = 2 per arm.\n" in text
    assert "**Verdict: too thin.**" in text
    assert "## Time: measured against the plan" in text
    assert "| t0 | on | 0 | completed | 1.7 min | 1.5 min | 1.11 | 0.000 |" in text


# --- seeds: a list or a count ----------------------------------------------------------------------


def test_seeds_may_be_a_count(tmp_path, repo_root):
    sweep = load_sweep(repo_root / "sweeps/demo.yaml", ["seeds=4"])
    assert sweep.spec.seeds == [0, 1, 2, 3]
    assert len(sweep.spec.grid_points()) == 6 * 4
    assert load_sweep(repo_root / "sweeps/demo.yaml", ["seeds=[3, 7]"]).spec.seeds == [3, 7]
    with pytest.raises(UserError, match="a count of seeds must be at least 1"):
        load_sweep(repo_root / "sweeps/demo.yaml", ["seeds=0"])
    result = CliRunner().invoke(main, ["validate", str(repo_root / "sweeps/demo.yaml"), "--set", "seeds=-2"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "seeds" in result.output


def test_replicate_sweeps_are_the_papers_headline_with_five_seeds(repo_root):
    headline = load_sweep(repo_root / "sweeps/replicate.yaml")
    assert headline.spec.seeds == [0, 1, 2, 3, 4]
    assert headline.base.data.name == "cifar10" and headline.base.train.epochs == 20
    model = headline.base.model
    assert (model.glimpses, model.feedback, model.attention_input) == tuple(HEADLINE.values())
    digits = load_sweep(repo_root / "sweeps/replicate-digits.yaml")
    assert digits.base.data.name == "digits" and len(digits.spec.seeds) >= 3
    assert "model.feedback" in digits.spec.search
