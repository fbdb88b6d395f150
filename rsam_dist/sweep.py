"""`rsam-dist sweep FILE`: Ray Tune runs one Ray Train run per trial (Train V2's Tune pattern).

Each Tune trial is a small driver function that builds and fits a `TorchTrainer` (Tune cannot
wrap a trainer itself any more). Drivers ask for a custom `train_driver` resource and no CPU, so
they never hold the CPUs their own Train workers need. Layout of the sweep directory:

    <storage>/<name>/
        sweep.yaml            the resolved sweep (what `report` and `--resume` read)
        tune*/                Tune's experiment state (resume) and per-trial TensorBoard logs
        trials/<trial_id>/    each trial's Train run: config.yaml, checkpoints, tensorboard/
        results.csv           one row per trial: params, status, epochs, final and best metrics
        history.csv           one row per trial and epoch
        best_config.yaml      the best trial's config, ready for `rsam-dist train`

With optuna and grid keys together (OptunaSearch refuses grid_search), each grid point ("arm")
gets its own Tune experiment and TPE study, `tune-arm<k>/`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from rsam_dist.errors import UserError
from rsam_dist.ray_cluster import TRIAL_DRIVER_RESOURCE, connect
from rsam_dist.sweep_config import Distribution, ResolvedSweep, SweepConfig, load_sweep

SWEEP_FILE = "sweep.yaml"
RESULTS_FILE = "results.csv"
HISTORY_FILE = "history.csv"
BEST_CONFIG_FILE = "best_config.yaml"
HISTORY_METRICS = ("test_top1", "test_top1_trainmode", "train_loss", "lr", "images_per_sec", "epoch_seconds")


# --- the trial: a driver that fits one TorchTrainer ---------------------------------------------


def run_trial(params: dict[str, Any], sweep_dir: str) -> None:
    """One Tune trial: the sweep's base config with `params`, trained by Ray Train."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rsam_dist.ray_train import build_trainer, fit_trainer
    from rsam_dist.runs import save_run_config

    sweep = load_sweep(Path(sweep_dir) / SWEEP_FILE)
    trial_id = tune.get_context().get_trial_id()
    config = sweep.trial_config(params)
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"storage": str(Path(sweep_dir) / "trials"),
                                                         "name": trial_id})}
    )
    path = f"{sweep_dir}/trials/{trial_id}"  # a stable name: a restored trial resumes its checkpoint
    save_run_config(path, config)
    fit_trainer(build_trainer(config, path, callbacks=[TuneReportCallback()], quiet=True))


# --- Tune wiring --------------------------------------------------------------------------------


def tune_domain(distribution: Distribution):
    from ray import tune

    kind = distribution.kind
    if kind == "grid":
        return tune.grid_search(list(distribution.grid))
    if kind == "choice":
        return tune.choice(list(distribution.choice))
    if kind == "uniform":
        return tune.uniform(*distribution.uniform)
    if kind == "loguniform":
        return tune.loguniform(*distribution.loguniform)
    low, high = distribution.int
    return tune.randint(low, high + 1)  # randint's upper bound is exclusive


def arms(spec: SweepConfig) -> list[dict[str, Any]]:
    """Fixed values per Tune experiment: one experiment, unless optuna meets grid keys or seeds."""
    if spec.algorithm != "optuna" or (not spec.grid_keys and len(spec.seeds) == 1):
        return [{}]
    return spec.grid_points()


def param_space(spec: SweepConfig, arm: dict[str, Any]) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for key, distribution in spec.search.items():
        space[key] = arm[key] if key in arm else tune_domain(distribution)
    if "train.seed" in arm:
        space["train.seed"] = arm["train.seed"]
    elif len(spec.seeds) == 1:
        space["train.seed"] = spec.seeds[0]
    else:
        space["train.seed"] = tune.grid_search(list(spec.seeds))
    if spec.algorithm == "grid":  # a grid's "choice" keys are enumerated too
        for key, distribution in spec.search.items():
            if distribution.kind == "choice" and key not in arm:
                space[key] = tune.grid_search(list(distribution.choice))
    return space


def planned_trials(spec: SweepConfig) -> int:
    """Trials of one Tune experiment (an arm, where optuna meets grid keys)."""
    if spec.algorithm == "optuna":
        return spec.num_samples
    return len(spec.grid_points()) * spec.num_samples


def experiment_name(index: int, count: int) -> str:
    return "tune" if count == 1 else f"tune-arm{index}"


def default_concurrency(spec: SweepConfig) -> int:
    """As many trials as the cluster fits at once: Tune does not reserve Train's workers itself."""
    import ray

    resources = ray.cluster_resources()
    trial = spec.trial
    fits = resources.get("CPU", 1) // (trial.num_workers * trial.cpus_per_worker)
    if trial.gpus_per_worker:
        fits = min(fits, resources.get("GPU", 0) // (trial.num_workers * trial.gpus_per_worker))
    return max(1, int(fits))


def build_tuner(sweep: ResolvedSweep, arm: dict[str, Any], name: str, restore: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    spec = sweep.spec
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep_dir=str(sweep.directory)),
        {"CPU": 0, TRIAL_DRIVER_RESOURCE: 1},
    )
    experiment = sweep.directory / name
    if restore and tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
    if spec.scheduler.type == "asha":
        # Our own `epoch` metric, not Tune's training_iteration, which restarts after a restore.
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=sweep.base.train.epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    search_alg = None
    if spec.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=arm.get("train.seed", spec.seeds[0]))
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, arm),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials or default_concurrency(spec),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(sweep.directory),
            verbose=0,  # ProgressPrinter below says what matters, a line per epoch and trial
            callbacks=[ProgressPrinter(sweep)],
        ),
    )


def ProgressPrinter(sweep: ResolvedSweep):  # noqa: N802 - a factory for a class that needs ray
    from ray.tune import Callback

    epochs = sweep.base.train.epochs
    keys = list(sweep.spec.search) + (["train.seed"] if len(sweep.spec.seeds) > 1 else [])
    planned = planned_trials(sweep.spec)

    class _ProgressPrinter(Callback):
        def _label(self, trial) -> str:
            values = ", ".join(f"{key.split('.')[-1]}={_short(trial.config.get(key))}" for key in keys)
            return f"{trial.trial_id} ({values})" if values else trial.trial_id

        def on_trial_result(self, iteration, trials, trial, result, **info):
            top1 = 100 * result.get("test_top1", 0)
            loss = result.get("train_loss", math.nan)
            epoch = int(result.get("epoch", 0))
            print(f"[{self._label(trial)}] epoch {epoch}/{epochs}  loss {loss:.4f}  test top-1 {top1:.2f}%", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            done = 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)
            print(f"[{self._label(trial)}] finished ({done}/{planned} trials done)", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[{self._label(trial)}] FAILED: see {trial.path}", flush=True)

    return _ProgressPrinter()


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- running, resuming, and writing the results ------------------------------------------------


def run_sweep(sweep: ResolvedSweep, address: str | None = None, resume: bool = False) -> Path:
    """Run (or resume) every trial; write the results table and best config; return the sweep dir."""
    directory = sweep.directory
    sweep_file = directory / SWEEP_FILE
    if sweep_file.exists() and not resume:
        raise UserError(f"{directory} already holds a sweep: add --resume to continue it, or set another name")
    if resume:
        if not sweep_file.exists():
            raise UserError(f"{directory}: nothing to resume (no {SWEEP_FILE}); run without --resume")
        sweep = load_sweep(sweep_file)  # the sweep as it was started, whatever FILE and --set say now
    if not address and sweep.base.data.name == "cifar10":
        from rsam_dist.data import load_dataset

        load_dataset(sweep.base.data)  # download once, or fail now with where to put the files

    interrupted = False
    with connect(address):
        import ray

        _require_trial_driver_slots()
        if not resume:
            sweep = sweep.for_cluster(ray.cluster_resources().get("GPU", 0))
            directory.mkdir(parents=True, exist_ok=True)
            sweep_file.write_text(sweep.to_yaml())
        experiments = arms(sweep.spec)
        for index, arm in enumerate(experiments):
            name = experiment_name(index, len(experiments))
            if len(experiments) > 1:
                print(f"arm {index + 1}/{len(experiments)}: {arm}", flush=True)
            results = build_tuner(sweep, arm, name, restore=resume).fit()
            # Tune returns normally on Ctrl-C, with trials still pending or never created.
            if results.num_terminated + results.num_errors < planned_trials(sweep.spec):
                interrupted = True
                break
    rows, history = collect_results(sweep)
    write_results(sweep, rows, history)
    if interrupted:
        raise KeyboardInterrupt
    failed = [row["trial_id"] for row in rows if row["status"] == "error"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} trials failed ({', '.join(failed)}); see {directory}")
    return directory


def _require_trial_driver_slots() -> None:
    import ray

    if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE, 0) < 1:
        raise UserError(
            f"this Ray cluster has no '{TRIAL_DRIVER_RESOURCE}' resource for sweep trial drivers: start its head "
            f"with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 4}}' (the cluster/*.yaml files do)"
        )


def collect_results(sweep: ResolvedSweep) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows for results.csv and history.csv.

    Tune's experiment state says which trials exist, their parameters and whether they failed;
    the epochs come from each trial's own run directory (metrics.jsonl), which stays right when
    Tune restores a trial that was interrupted mid-way or just as it finished.
    """
    from ray.tune import ExperimentAnalysis

    from rsam_dist.recorder import read_metrics

    rows, history = [], []
    planned = sweep.base.train.epochs
    keys = [*sweep.spec.search, "train.seed"]
    for experiment in sorted(sweep.directory.glob("tune*")):
        if not experiment.is_dir():
            continue
        try:
            analysis = ExperimentAnalysis(str(experiment))
        except Exception:  # noqa: BLE001 - an experiment interrupted before its first save
            continue
        for trial in analysis.trials:
            run_dir = sweep.directory / "trials" / trial.trial_id
            epochs = read_metrics(run_dir)
            last = epochs[-1] if epochs else {}
            epochs_run = int(last.get("epoch", 0))
            if trial.status == "ERROR":
                status = "error"
            elif epochs_run >= planned:
                status = "completed"
            elif trial.status == "TERMINATED":
                status = "stopped_early"
            else:
                status = "pending"
            row = {"trial_id": trial.trial_id, "status": status, "epochs_run": epochs_run, "epochs_planned": planned}
            row.update({key: trial.config.get(key) for key in keys})
            row.update({f"final_{name}": value for name, value in last.items() if _is_epoch_metric(name)})
            row["best_test_top1"] = max((record["test_top1"] for record in epochs), default=None)
            row["run_dir"] = str(run_dir)
            rows.append(row)
            for record in epochs:
                entry = {"trial_id": trial.trial_id, "epoch": int(record["epoch"])}
                entry.update({name: value for name, value in record.items() if _is_epoch_metric(name)})
                history.append(entry)
    return rows, history


def _is_epoch_metric(name: str) -> bool:
    return name in HISTORY_METRICS or name.startswith("test_top1_glimpse_")


def write_results(sweep: ResolvedSweep, rows: list[dict[str, Any]], history: list[dict[str, Any]]) -> None:
    directory = sweep.directory
    _write_csv(directory / RESULTS_FILE, rows)
    _write_csv(directory / HISTORY_FILE, history)
    scored = [row for row in rows if row["status"] != "error" and row.get(f"final_{sweep.spec.metric}") is not None]
    if scored:
        pick = max if sweep.spec.mode == "max" else min
        best = pick(scored, key=lambda row: row[f"final_{sweep.spec.metric}"])
        params = {key: best[key] for key in [*sweep.spec.search, "train.seed"]}
        config = sweep.trial_config(params)
        header = (f"# Best trial {best['trial_id']} of sweep {sweep.spec.name}: final {sweep.spec.metric} "
                  f"{best[f'final_{sweep.spec.metric}']:.4f}\n# rsam-dist train {directory / BEST_CONFIG_FILE}\n")
        (directory / BEST_CONFIG_FILE).write_text(header + config.to_yaml())


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def summarize(directory: Path) -> str:
    with (directory / RESULTS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    states = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
    best = (directory / BEST_CONFIG_FILE).read_text().splitlines()[0].lstrip("# ") if (
        directory / BEST_CONFIG_FILE).exists() else "no trial finished"
    return (f"{len(rows)} trials: {states}\n{best}\nresults: {directory / RESULTS_FILE}\n"
            f"tensorboard --logdir {directory}")


def load_sweep_for_cli(path: str, overrides: tuple[str, ...], resume: bool) -> ResolvedSweep:
    """The sweep to run: from FILE, or with --resume from a sweep directory or its FILE."""
    candidate = Path(path)
    if resume and candidate.is_dir():
        if not (candidate / SWEEP_FILE).exists():
            raise UserError(f"{candidate}: not a sweep directory (no {SWEEP_FILE})")
        return load_sweep(candidate / SWEEP_FILE)
    return load_sweep(candidate, overrides)

