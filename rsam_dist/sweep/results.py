"""The sweep directory's files: this module writes them and reads them back, typed.

    <storage>/<name>/
        sweep.yaml            the resolved sweep, read back through `load_sweep` (report, --resume, trials)
        trials/<trial_id>/    each trial's run directory (config.yaml, metrics.jsonl, checkpoints, tensorboard/)
        results.csv           one row per trial: trial_id, status, epochs_run, epochs_planned, the searched
                              keys and train.seed, final_<metric> for each history metric, best_test_top1,
                              seconds and gpu_hours (measured) beside estimated_seconds and
                              estimated_gpu_hours (from plan.yaml), run_dir
        plan.yaml             the plan made before the sweep started (rsam_dist.plan.record)
        history.csv           one row per trial and epoch: trial_id, epoch, each history metric
        best_config.yaml      the best trial's training config, ready for `rsam-dist train`

The CSVs are for people and spreadsheets; nothing here guesses a cell's type from its text. A
searched key's cells are read back as the training config types that key, metric cells as floats;
a cell or line that does not fit (a hand edit) is one error naming the file and line.
Every file is written whole or not at all (a temporary file, then a rename).

    from rsam_dist.sweep.results import load_sweep_results
    results = load_sweep_results("runs/demo")
    [(trial.trial_id, trial.status, trial.final.get("test_top1")) for trial in results.trials]
"""

from __future__ import annotations

import csv
import io
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError

from rsam_dist.config import Config, read_yaml, shown
from rsam_dist.errors import UserError
from rsam_dist.metrics import is_history_metric
from rsam_dist.run_start import hold_lock
from rsam_dist.runs import CONFIG_FILE, RunDir, read_metrics, write_bytes
from rsam_dist.sweep.config import ResolvedSweep, SweepConfig, load_sweep

SWEEP_FILE = "sweep.yaml"
RESULTS_FILE = "results.csv"
HISTORY_FILE = "history.csv"
BEST_CONFIG_FILE = "best_config.yaml"
TRIALS_DIR = "trials"
FINAL_PREFIX = "final_"
"""results.csv's column of a history metric's value after a trial's last epoch: final_<metric>."""

TIME_COLUMNS = ("seconds", "gpu_hours", "estimated_seconds", "estimated_gpu_hours")
"""results.csv's measured time of each trial beside the plan's estimate (GPU-hours follow from the seconds)."""

TUNE_STATE_PATTERN = "experiment_state-*.json"
"""Tune's saved experiment state in a tune*/ folder (what a restore and ExperimentAnalysis read)."""

TrialStatus = Literal["completed", "stopped_early", "error", "pending", "lost"]
STATUSES: tuple[str, ...] = get_args(TrialStatus)


class EpochRecord(BaseModel):
    """One row of history.csv (without its trial_id): one finished epoch of one trial."""

    epoch: int
    metrics: dict[str, float]
    """The history metrics of the metric table, by name."""


class TrialResult(BaseModel):
    """One trial: a row of results.csv, and its rows of history.csv."""

    trial_id: str
    status: TrialStatus
    """completed (ran every planned epoch), stopped_early (by the scheduler), error, pending
    (never started or interrupted), or lost (unfinished, and Tune's state that would resume it is
    unreadable: only its run directory is left)."""
    epochs_run: int
    epochs_planned: int
    params: dict[str, Any]
    """The searched keys' values and train.seed, by dotted key, typed as the training config types them."""
    final: dict[str, float]
    """The last epoch's history metrics, by name (empty when no epoch finished)."""
    best_test_top1: float | None
    """The best epoch's test top-1."""
    run_dir: str
    history: list[EpochRecord] = []
    """Every finished epoch, in order."""
    seconds: float | None = None
    """Measured: from the trial's start to its last report (Tune's time_total_s)."""
    estimated_seconds: float | None = None
    """What `rsam-dist plan` estimated before the sweep (plan.yaml), if it did."""


def trial_run(sweep_dir: str | Path, trial_id: str) -> RunDir:
    """A trial's run directory. The name is Tune's stable trial id: a restored trial resumes its checkpoint."""
    return RunDir(str(Path(sweep_dir) / TRIALS_DIR), trial_id)


# --- writing ---------------------------------------------------------------------------------------


def write_sweep_file(sweep: ResolvedSweep) -> None:
    write_bytes(str(sweep.directory / SWEEP_FILE), sweep.to_yaml().encode())


def collect_results(sweep: ResolvedSweep) -> list[TrialResult]:
    """Every trial of the sweep, from Tune's experiment state and each trial's own run directory.

    Tune's state says which trials exist, their parameters and whether they failed; the epochs
    come from each trial's metrics.jsonl, which stays right when Tune restores a trial that was
    interrupted mid-way or just as it finished. Where a tune*/ state is unreadable, each run in
    trials/ that no readable state names is reported from its own files (completed, or lost),
    and a warning names the folder: nothing is dropped silently.
    """
    from rsam_dist.plan.record import estimated_seconds, read_plan_record

    trials = []
    named: set[str] = set()
    unreadable = []
    keys = param_keys(sweep)
    plan = read_plan_record(sweep.directory)
    for experiment in sorted(sweep.directory.glob("tune*")):
        if not experiment.is_dir() or not any(experiment.glob(TUNE_STATE_PATTERN)):
            continue  # interrupted before Tune's first save: it knew of no trial yet
        try:
            analysis = _experiment_analysis(experiment)
        except Exception as err:  # noqa: BLE001 - Tune raises many types for a damaged state
            unreadable.append(experiment)
            print(f"rsam-dist: warning: {experiment}: Tune's state is unreadable ({_first_line(err)}); "
                  f"its trials are reported from their run directories", file=sys.stderr, flush=True)
            continue
        for trial in analysis.trials:
            run = trial_run(sweep.directory, trial.trial_id)
            params = {key: trial.config.get(key) for key in keys}
            named.add(trial.trial_id)
            result = _trial_result(trial.trial_id, trial.status, params, read_metrics(run), run, sweep)
            result.seconds = (trial.last_result or {}).get("time_total_s")
            result.estimated_seconds = estimated_seconds(plan, params)
            trials.append(result)
    if unreadable:
        trials += [_trial_from_its_run(run_dir, sweep) for run_dir in sorted((sweep.directory / TRIALS_DIR).glob("*"))
                   if run_dir.is_dir() and run_dir.name not in named]
    return trials


def unreadable_state(experiment: Path) -> str | None:
    """Why Tune's saved state in the folder `experiment` cannot be read (one line), or None when it
    reads or Tune never saved one there."""
    if not experiment.is_dir() or not any(experiment.glob(TUNE_STATE_PATTERN)):
        return None
    try:
        _experiment_analysis(experiment)
    except Exception as err:  # noqa: BLE001 - Tune raises many types for a damaged state
        return _first_line(err)
    return None


def _experiment_analysis(experiment: Path):
    from ray.tune import ExperimentAnalysis  # reading a finished experiment needs no running Ray

    return ExperimentAnalysis(str(experiment))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:100] if text else type(err).__name__


def _trial_from_its_run(run_dir: Path, sweep: ResolvedSweep) -> TrialResult:
    """A trial that no readable Tune state names, from its run directory: its config.yaml says its
    values, its metrics.jsonl its epochs."""
    run = trial_run(sweep.directory, run_dir.name)
    params: dict[str, Any] = {}
    try:
        config = read_yaml(run_dir / CONFIG_FILE)
        params = {key: _dotted(config, key) for key in param_keys(sweep)}
    except UserError:
        pass  # no readable config.yaml (the trial never got that far): its values are unknown
    return _trial_result(run_dir.name, None, params, read_metrics(run), run, sweep)


def _dotted(document: dict[str, Any], key: str) -> Any:
    node: Any = document
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _trial_result(trial_id: str, tune_status: str | None, params: dict[str, Any], epochs: list[dict[str, float]],
                  run: RunDir, sweep: ResolvedSweep) -> TrialResult:
    """`tune_status` None: Tune's record of the trial is lost; it counts as completed only if its
    own run finished every planned epoch."""
    history = [EpochRecord(epoch=int(record["epoch"]),
                           metrics={name: value for name, value in record.items() if is_history_metric(name)})
               for record in epochs]
    planned = sweep.base.train.epochs
    epochs_run = history[-1].epoch if history else 0
    if tune_status == "ERROR":
        status = "error"
    elif epochs_run >= planned:
        status = "completed"
    elif tune_status is None:
        status = "lost"
    elif tune_status == "TERMINATED":
        status = "stopped_early"
    else:
        status = "pending"
    return TrialResult(
        trial_id=trial_id, status=status, epochs_run=epochs_run, epochs_planned=planned, params=params,
        final=history[-1].metrics if history else {},
        best_test_top1=max((record.metrics["test_top1"] for record in history), default=None),
        run_dir=run.path, history=history,
    )


def write_results(sweep: ResolvedSweep, trials: list[TrialResult]) -> None:
    """results.csv, history.csv and (once a trial has a score) best_config.yaml."""
    directory = sweep.directory
    keys = param_keys(sweep)
    finals = _union(trial.final for trial in trials)
    results_columns = ["trial_id", "status", "epochs_run", "epochs_planned", *keys,
                       *(FINAL_PREFIX + name for name in finals), "best_test_top1", *TIME_COLUMNS, "run_dir"]
    _write_csv(directory / RESULTS_FILE, results_columns, [_results_row(trial, keys, sweep) for trial in trials])
    metrics = _union(record.metrics for trial in trials for record in trial.history)
    history_rows = [{"trial_id": trial.trial_id, "epoch": record.epoch, **record.metrics}
                    for trial in trials for record in trial.history]
    _write_csv(directory / HISTORY_FILE, ["trial_id", "epoch", *metrics], history_rows)
    best = best_scored_trial(sweep, trials)
    if best is not None:
        config = sweep.trial_config(best.params)
        header = f"# {best_line(sweep, best)}\n# rsam-dist train {directory / BEST_CONFIG_FILE}\n"
        write_bytes(str(directory / BEST_CONFIG_FILE), (header + config.to_yaml()).encode())


def _results_row(trial: TrialResult, keys: list[str], sweep: ResolvedSweep) -> dict[str, Any]:
    from rsam_dist.plan.record import gpu_hours

    return {
        "trial_id": trial.trial_id, "status": trial.status, "epochs_run": trial.epochs_run,
        "epochs_planned": trial.epochs_planned, **{key: trial.params.get(key) for key in keys},
        **{FINAL_PREFIX + name: value for name, value in trial.final.items()},
        "best_test_top1": trial.best_test_top1,
        "seconds": trial.seconds, "gpu_hours": gpu_hours(sweep.spec, trial.seconds),
        "estimated_seconds": trial.estimated_seconds,
        "estimated_gpu_hours": gpu_hours(sweep.spec, trial.estimated_seconds),
        "run_dir": trial.run_dir,
    }


def _union(mappings) -> list[str]:
    """The keys of all `mappings`, in the order they first appear."""
    return list(dict.fromkeys(key for mapping in mappings for key in mapping))


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)  # None becomes an empty cell
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(str(path), text.getvalue().encode())


# --- the best trial and the one-paragraph summary ------------------------------------------------


def param_keys(sweep: ResolvedSweep) -> list[str]:
    """The dotted keys that vary between trials: the searched ones, and the seed."""
    return [*sweep.spec.search, "train.seed"]


def best_trial(trials: list[TrialResult], metric: str, mode: str) -> TrialResult | None:
    """The trial with the best final `metric` among `trials` that reported it."""
    scored = [trial for trial in trials if metric in trial.final]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda trial: trial.final[metric])


def best_scored_trial(sweep: ResolvedSweep, trials: list[TrialResult]) -> TrialResult | None:
    """The trial best_config.yaml holds: any that did not fail, so that an interrupted sweep
    (nothing completed yet) still names its best so far. The report ranks completed trials only."""
    return best_trial([t for t in trials if t.status != "error"], sweep.spec.metric, sweep.spec.mode)


def best_line(sweep: ResolvedSweep, best: TrialResult) -> str:
    metric = sweep.spec.metric
    return f"Best trial {best.trial_id} of sweep {sweep.spec.name}: final {metric} {best.final[metric]:.4f}"


def summary_text(results: SweepResults) -> str:
    """What `rsam-dist sweep` prints at the end: trial counts by status, the best trial, where to look."""
    counts = Counter(trial.status for trial in results.trials)
    states = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    best = best_scored_trial(results.sweep, results.trials)
    best_text = best_line(results.sweep, best) if best is not None else "no trial finished"
    return (f"{len(results.trials)} trials: {states}\n{best_text}\nresults: {results.directory / RESULTS_FILE}\n"
            f"tensorboard --logdir {results.directory}")


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResults:
    """A sweep directory read back: the sweep as it ran, and its trials."""

    directory: Path
    sweep: ResolvedSweep
    trials: list[TrialResult]
    has_history: bool
    """Whether history.csv was there (the per-epoch figure needs it)."""

    @property
    def spec(self) -> SweepConfig:
        return self.sweep.spec

    @property
    def base(self) -> Config:
        return self.sweep.base

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dataset(self) -> str:
        return self.base.data.name

    def value(self, trial: TrialResult, key: str) -> Any:
        """The trial's value of a dotted config key: searched, or else the base config's."""
        return trial.params[key] if key in trial.params else self.base_value(key)

    def base_value(self, key: str) -> Any:
        node: Any = self.base.to_dict()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def with_status(self, *statuses: str) -> list[TrialResult]:
        return [trial for trial in self.trials if trial.status in statuses]


@contextmanager
def hold_sweep_lock(sweep_dir: str | Path) -> Iterator[None]:
    """Hold the sweep directory's lock (as `rsam-dist sweep` does) for a command that writes into it."""
    directory = Path(sweep_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory: give the directory `rsam-dist sweep` wrote")
    with hold_lock(directory, "sweep"):
        yield


def load_sweep_results(sweep_dir: str | Path) -> SweepResults:
    """The sweep directory `rsam-dist sweep` wrote, typed; a UserError if it is not one."""
    directory = Path(sweep_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory: give the directory `rsam-dist sweep` wrote")
    results_path = directory / RESULTS_FILE
    if not results_path.is_file():
        raise UserError(f"{directory}: no {RESULTS_FILE}: run `rsam-dist sweep ...` first")
    rows = _read_csv(results_path, ("trial_id", "status"))
    if not rows:
        raise UserError(f"{directory}: {RESULTS_FILE} has no trials: run `rsam-dist sweep ...` first")
    if not (directory / SWEEP_FILE).is_file():
        raise UserError(f"{directory}: no {SWEEP_FILE} beside {RESULTS_FILE}: not a sweep directory")
    sweep = load_sweep(directory / SWEEP_FILE)

    history_path = directory / HISTORY_FILE
    histories: dict[str, list[EpochRecord]] = {}
    if history_path.is_file():
        for number, row in _read_csv(history_path, ("trial_id", "epoch")):
            trial_id = row.pop("trial_id")
            record = _parse(EpochRecord, {"epoch": row.pop("epoch"), "metrics": _filled(row)}, history_path, number)
            histories.setdefault(trial_id, []).append(record)
    adapters = {key: TypeAdapter(_config_type(key)) for key in param_keys(sweep)}
    trials = []
    for number, row in rows:
        fields = {
            "trial_id": row["trial_id"], "status": row["status"], "epochs_run": row.get("epochs_run"),
            "epochs_planned": row.get("epochs_planned"), "best_test_top1": row.get("best_test_top1") or None,
            "run_dir": row.get("run_dir") or "",
            "final": {name.removeprefix(FINAL_PREFIX): cell for name, cell in _filled(row).items()
                      if name.startswith(FINAL_PREFIX)},
            "params": {key: _parse(adapter, row[key], results_path, number, key) if row[key] else None
                       for key, adapter in adapters.items() if key in row},
            "history": sorted(histories.get(row["trial_id"], []), key=lambda record: record.epoch),
            "seconds": row.get("seconds") or None, "estimated_seconds": row.get("estimated_seconds") or None,
        }
        trials.append(_parse(TrialResult, fields, results_path, number))
    return SweepResults(directory=directory, sweep=sweep, trials=trials, has_history=history_path.is_file())


_EXTRA_CELLS = "\0extra"
"""csv.DictReader's key for the cells of a row longer than the header."""


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file that rsam-dist wrote, each with its line number (as an editor shows
    it); a file that is not such a table (hand-edited, binary) is a UserError naming file and line."""
    rows = []
    line = 1
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, restkey=_EXTRA_CELLS)
            header = reader.fieldnames or []
            missing = [column for column in required if column not in header]
            if missing:
                raise UserError(f"{path}: line 1: no {', '.join(missing)} column: {_rewrite_hint(path)}")
            for row in reader:
                line = reader.line_num
                if _EXTRA_CELLS in row or None in row.values():
                    more_or_fewer = "more" if _EXTRA_CELLS in row else "fewer"
                    raise UserError(f"{path}: line {line}: {more_or_fewer} cells than the header has columns: "
                                    f"{_rewrite_hint(path)}")
                rows.append((line, row))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8): {_rewrite_hint(path)}") from None
    except csv.Error as err:
        raise UserError(f"{path}: line {line + 1}: not CSV ({_first_line(err)}): {_rewrite_hint(path)}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None
    return rows


def _rewrite_hint(path: Path) -> str:
    return f"fix it, or rewrite the sweep's tables with `rsam-dist sweep {path.parent} --resume`"


def _filled(row: dict[str, str]) -> dict[str, str]:
    """The row's non-empty cells (an empty cell: no value, e.g. a metric a trial never reported)."""
    return {column: cell for column, cell in row.items() if cell}


def _config_type(key: str) -> Any:
    """The type the training config gives a dotted key, e.g. model.glimpses -> int."""
    *sections, leaf = key.split(".")
    model: Any = Config
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[leaf].annotation


def _parse(kind: type[BaseModel] | TypeAdapter, value: Any, path: Path, line: int, column: str = "") -> Any:
    """`value` validated as `kind`; a cell that does not fit is a UserError naming file, line and column."""
    try:
        if isinstance(kind, TypeAdapter):
            return kind.validate_python(value)
        return kind.model_validate(value)
    except ValidationError as err:
        error = err.errors()[0]
        where = column or ".".join(str(part) for part in error["loc"])
        raise UserError(f"{path}: line {line}, {where}: {error['msg']} (got {shown(error['input'])}): "
                        f"{_rewrite_hint(path)}") from None
