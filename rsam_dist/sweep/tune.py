"""`rsam-dist sweep FILE`: Ray Tune runs one Ray Train run per trial (Train V2's Tune pattern).

Each Tune trial is a small driver function that builds and fits a `TorchTrainer` (Tune cannot
wrap a trainer itself any more). Drivers ask for a custom `train_driver` resource and no CPU, so
they never hold the CPUs their own Train workers need. What the sweep directory holds is in
`rsam_dist.sweep.results`, which writes it; Tune adds its experiment state (resume) and
per-trial CSV/JSON results under `tune*/`. TensorBoard shows each trial's own run, named after it
(`trials/<id>/tensorboard/glimpses=4,feedback=off/`), not a second copy from Tune's logger.

With optuna and grid keys together (OptunaSearch refuses grid_search), each grid point gets its
own Tune experiment and TPE study, `tune-point<k>/`.

One command at a time per sweep directory (a lock, held for the command's life). `--resume` runs
the sweep stored in the directory, wherever the directory now is; a `--set`, or a FILE that now
says something else, is refused rather than ignored. An experiment whose Tune state is unreadable
is left alone, and its unfinished trials are reported as lost (exit 2), never dropped.

    rsam-dist sweep sweeps/demo.yaml            # run it; prints the results summary
    rsam-dist sweep runs/demo --resume          # finish an interrupted one
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rsam_dist import timeline
from rsam_dist.config import shown
from rsam_dist.errors import UserError
from rsam_dist.ray_cluster import TRIAL_DRIVER_RESOURCE, connect
from rsam_dist.resources import ResourceRequest
from rsam_dist.run_start import hold_lock
from rsam_dist.runs import save_run_config, with_run_dir
from rsam_dist.sweep.config import (
    Distribution,
    ResolvedSweep,
    SweepConfig,
    label_keys,
    load_sweep,
    most_glimpses,
    trial_label,
)
from rsam_dist.sweep.progress import SweepProgress
from rsam_dist.sweep.results import (
    RESULTS_FILE,
    SWEEP_FILE,
    TRIALS_DIR,
    collect_results,
    trial_run,
    unreadable_state,
    write_results,
    write_sweep_file,
)

# --- the trial: a driver that fits one TorchTrainer ---------------------------------------------


def run_trial(params: dict[str, Any], sweep_dir: str) -> None:
    """One Tune trial: the sweep's base config with `params`, trained by Ray Train."""
    timeline.mark("trial_start")
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rsam_dist.ray_train import build_trainer, fit_trainer

    sweep = load_sweep(Path(sweep_dir) / SWEEP_FILE)
    run = trial_run(sweep_dir, tune.get_context().get_trial_id())
    config = with_run_dir(sweep.trial_config(params), run)
    save_run_config(run, config)
    keys = label_keys(sweep.spec)
    # The searched values as the trial's config holds them (Tune's own may be numpy scalars).
    resolved = _flatten(config.to_dict())
    searched = {key: resolved[key] for key in keys}
    identity = {"label": trial_label(searched, keys) or run.name, "params": searched,
                "most_glimpses": most_glimpses(sweep.spec, sweep.base)}
    timeline.mark("trial_fit")
    fit_trainer(build_trainer(config, run, callbacks=[TuneReportCallback()], quiet=True, trial=identity))
    timeline.mark("trial_end")


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


def experiment_points(spec: SweepConfig) -> list[dict[str, Any]]:
    """The values each Tune experiment fixes: one experiment fixing nothing, unless optuna meets
    grid keys or several seeds (OptunaSearch refuses grid_search), then one per grid point."""
    if spec.algorithm != "optuna" or (not spec.grid_keys and len(spec.seeds) == 1):
        return [{}]
    return spec.grid_points()


def param_space(spec: SweepConfig, fixed: dict[str, Any]) -> dict[str, Any]:
    """Tune's param_space: the `fixed` values of this experiment, a Tune domain for every other key."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, distribution in spec.search.items():
        space[key] = fixed[key] if key in fixed else tune_domain(distribution)
    if "train.seed" in fixed:
        space["train.seed"] = fixed["train.seed"]
    elif len(spec.seeds) == 1:
        space["train.seed"] = spec.seeds[0]
    else:
        space["train.seed"] = tune.grid_search(list(spec.seeds))
    if spec.algorithm == "grid":  # a grid's "choice" keys are enumerated too
        for key, distribution in spec.search.items():
            if distribution.kind == "choice" and key not in fixed:
                space[key] = tune.grid_search(list(distribution.choice))
    return space


def planned_trials(spec: SweepConfig) -> int:
    """Trials of one Tune experiment (of one grid point, where optuna meets grid keys)."""
    if spec.algorithm == "optuna":
        return spec.num_samples
    return len(spec.grid_points()) * spec.num_samples


def experiment_name(index: int, count: int) -> str:
    return "tune" if count == 1 else f"tune-point{index}"


def default_concurrency(spec: SweepConfig) -> int:
    """As many trials as the cluster fits at once: Tune does not reserve Train's workers itself."""
    import ray

    resources = ray.cluster_resources()
    trial = spec.trial
    fits = resources.get("CPU", 1) // (trial.num_workers * trial.cpus_per_worker)
    if trial.gpus_per_worker:
        fits = min(fits, resources.get("GPU", 0) // (trial.num_workers * trial.gpus_per_worker))
    return max(1, int(fits))


def build_tuner(sweep: ResolvedSweep, fixed: dict[str, Any], name: str, restore: bool):
    """The Tuner of one experiment `name` (fixing the values `fixed`), or the stored one to resume."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
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
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        seed = fixed.get("train.seed", spec.seeds[0])
        search_alg = OptunaSearch(sampler=TPESampler(seed=seed, n_startup_trials=spec.startup_trials))
    return tune.Tuner(
        trainable,
        param_space=param_space(spec, fixed),
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
            verbose=0,  # progress_printer below says what matters, a line per epoch and trial
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), progress_printer(sweep)],
        ),
    )


_progress: SweepProgress | None = None
"""The running command's progress. A module global, not a field of the callback: Tune pickles its
callbacks into the experiment state and a restored Tuner brings back that old copy."""


def progress_printer(sweep: ResolvedSweep):
    """A Tune callback that prints a line per trial epoch, finish and failure, each ending with the
    sweep's progress (`rsam_dist.sweep.progress`). The class needs ray, hence the factory."""
    from ray.tune import Callback

    epochs = sweep.base.train.epochs
    keys = label_keys(sweep.spec)

    def tail(trials) -> str:
        if _progress is None:  # a Tuner restored outside run_sweep
            return ""
        ended = [t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")]
        return f"  | {_progress.summary(ended)}"

    class _ProgressPrinter(Callback):
        def _label(self, trial) -> str:
            values = trial_label(trial.config, keys)
            return f"{trial.trial_id} ({values})" if values else trial.trial_id

        def on_trial_start(self, iteration, trials, trial, **info):
            if _progress is not None:
                _progress.started(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            top1 = 100 * result.get("test_top1", 0)
            loss = result.get("train_loss", math.nan)
            epoch = int(result.get("epoch", 0))
            if _progress is not None:
                _progress.epoch(trial.trial_id, epoch)
            print(f"[{self._label(trial)}] epoch {epoch}/{epochs}  loss {loss:.4f}  test top-1 {top1:.2f}%"
                  f"{tail(trials)}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            if _progress is not None:
                _progress.finished(trial.trial_id)
            print(f"[{self._label(trial)}] finished{tail(trials)}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            if _progress is not None:
                _progress.finished(trial.trial_id)
            print(f"[{self._label(trial)}] FAILED: see {trial.path}{tail(trials)}", flush=True)

    return _ProgressPrinter()


# --- running and resuming ---------------------------------------------------------------------


def run_sweep(
    sweep: ResolvedSweep, address: str | None = None, resume: bool = False, on_start: Callable[[], None] | None = None
) -> Path:
    """Run (or resume) every trial; write the results table and best config; return the sweep dir.

    The sweep directory is locked for the whole command: a second `sweep` (or `report`) on it is
    refused in one line naming this one. `on_start` runs once a new sweep has passed its checks and
    written sweep.yaml (the CLI keeps the plan beside it then).
    """
    directory = sweep.directory
    with hold_lock(directory, "sweep"):
        return _run_sweep_locked(sweep, address, resume, on_start)


def _run_sweep_locked(
    sweep: ResolvedSweep, address: str | None, resume: bool, on_start: Callable[[], None] | None
) -> Path:
    directory = sweep.directory
    sweep_file = directory / SWEEP_FILE
    if sweep_file.exists() and not resume:
        raise UserError(f"{directory} already holds a sweep: add --resume to continue it, or set another name")
    if resume:
        if not sweep_file.exists():
            raise UserError(f"{directory}: nothing to resume (no {SWEEP_FILE}); run without --resume")
        sweep = load_stored_sweep(directory)  # the sweep as it was started (load_sweep_for_cli refused changes)
    if not address and sweep.base.data.name == "cifar10":
        from rsam_dist.data import ensure_available

        ensure_available(sweep.base.data)  # download once, or fail now with where to put the files

    interrupted = False
    with connect(address):
        import ray

        _require_trial_driver_slots()
        if not resume:
            sweep = sweep.for_cluster(ray.cluster_resources().get("GPU", 0))
        # Each trial is a Train run of this shape: one the cluster cannot hold would wait for ever.
        ResourceRequest.for_scaling(sweep.base.scaling, keys="trial", what="each trial").ensure_available()
        if not resume:
            write_sweep_file(sweep)
            if on_start is not None:
                on_start()
        experiments = experiment_points(sweep.spec)
        global _progress
        _progress = SweepProgress(
            total=len(experiments) * planned_trials(sweep.spec), epochs=sweep.base.train.epochs,
            concurrency=sweep.spec.max_concurrent_trials or default_concurrency(sweep.spec))
        for index, fixed in enumerate(experiments):
            name = experiment_name(index, len(experiments))
            if len(experiments) > 1:
                print(f"grid point {index + 1}/{len(experiments)}: {fixed}", flush=True)
            if resume and unreadable_state(directory / name) is not None:
                # Restoring would fail, and a fresh experiment would overwrite what is left of it:
                # leave it as it is; its trials are reported as lost below.
                print(f"skipping {directory / name}: Tune's state there is unreadable", flush=True)
                continue
            results = build_tuner(sweep, fixed, name, restore=resume).fit()
            _progress.end_experiment(results.num_terminated + results.num_errors)
            # Tune returns normally on Ctrl-C, with trials still pending or never created.
            if results.num_terminated + results.num_errors < planned_trials(sweep.spec):
                interrupted = True
                break
    trials = collect_results(sweep)
    write_results(sweep, trials)
    if interrupted:
        raise KeyboardInterrupt
    failed = [trial.trial_id for trial in trials if trial.status == "error"]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(trials)} trials failed ({', '.join(failed)}); see {directory}")
    lost = [trial.trial_id for trial in trials if trial.status == "lost"]
    if lost:
        named = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
        raise UserError(f"{len(lost)} of {len(trials)} trials lost to an unreadable Tune state ({named}): "
                        f"their runs stay in {directory / TRIALS_DIR} and {directory / RESULTS_FILE} lists them; "
                        "start the sweep again under another name to rerun them")
    return directory


def _require_trial_driver_slots() -> None:
    import ray

    if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE, 0) < 1:
        raise UserError(
            f"this Ray cluster has no '{TRIAL_DRIVER_RESOURCE}' resource for sweep trial drivers: start its head "
            f"with --resources='{{\"{TRIAL_DRIVER_RESOURCE}\": 4}}' (the cluster/*.yaml files do)"
        )


def load_sweep_for_cli(path: str, overrides: tuple[str, ...], resume: bool) -> ResolvedSweep:
    """The sweep to run: from FILE, or with --resume the sweep stored in a sweep directory (given
    itself, or through the FILE that started it). A resume runs the stored sweep as it was started:
    --set, or a FILE that now says something else, is refused rather than ignored."""
    candidate = Path(path)
    if not resume:
        return load_sweep(candidate, overrides)
    if overrides:
        raise UserError(f"--resume continues the sweep as it was started: drop --set {overrides[0]} "
                        "(or start a new sweep with another name)")
    if candidate.is_dir():
        return load_stored_sweep(candidate)
    given = load_sweep(candidate)
    stored_file = given.directory / SWEEP_FILE
    if not stored_file.is_file():
        raise UserError(f"{given.directory}: nothing to resume (no {SWEEP_FILE}); run without --resume")
    stored = load_stored_sweep(given.directory)
    difference = first_difference(stored, given)
    if difference is not None:
        raise UserError(f"{candidate} differs from the sweep stored in {stored_file} at {difference}: "
                        f"--resume runs the stored sweep; resume it with `rsam-dist sweep {given.directory} "
                        "--resume`, or start the changed one with another name")
    return stored


def load_stored_sweep(directory: Path) -> ResolvedSweep:
    """The sweep stored in the sweep directory `directory`, placed where that directory now is (a
    sweep directory copied or moved elsewhere resumes there, not where it was started)."""
    if not (directory / SWEEP_FILE).is_file():
        raise UserError(f"{directory}: not a sweep directory (no {SWEEP_FILE})")
    stored = load_sweep(directory / SWEEP_FILE)
    here = directory.expanduser().resolve()
    spec = stored.spec.model_copy(update={"storage": str(here.parent), "name": here.name})
    return ResolvedSweep(spec, stored.base, stored.source)


def first_difference(stored: ResolvedSweep, given: ResolvedSweep) -> str | None:
    """The first dotted key where `given` (a sweep file, resolved) differs from the `stored` sweep
    ("key: stored -> given"), or None. A `gpus_per_worker: auto` in the file matches what it was
    settled to when the stored sweep started."""
    stored_document = yaml.safe_load(stored.to_yaml())
    given_document = yaml.safe_load(given.to_yaml())
    if given.spec.trial.gpus_per_worker == "auto":
        settled = stored.spec.trial.gpus_per_worker
        given_document["trial"]["gpus_per_worker"] = settled
        given_document["base"]["scaling"]["gpus_per_worker"] = settled
    stored_flat, given_flat = _flatten(stored_document), _flatten(given_document)
    for key in dict.fromkeys([*stored_flat, *given_flat]):
        if stored_flat.get(key, "(unset)") != given_flat.get(key, "(unset)"):
            return f"{key}: {shown(stored_flat.get(key, '(unset)'))} -> {shown(given_flat.get(key, '(unset)'))}"
    return None


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
