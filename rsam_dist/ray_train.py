"""`rsam-dist train`: the training loop on every worker of a Ray Train `TorchTrainer` (Train V2).

Ray sets up the process group (nccl on GPUs, gloo on CPUs); `fit` reads its rank from it. Rank 0
prints, writes TensorBoard and the best checkpoint; every rank calls `ray.train.report` each epoch
(a barrier), rank 0 with the epoch checkpoint. A worker that dies is replaced and the group
resumes from the last committed checkpoint (`train.max_failures`); rerunning with the same run
directory (`--resume`) does the same after the driver itself died.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsam_dist import timeline
from rsam_dist.config import Config
from rsam_dist.data import ensure_available
from rsam_dist.errors import UserError
from rsam_dist.loss_watch import NonFiniteLoss
from rsam_dist.resources import ResourceRequest, autoscaling_node_types, live_node_resources, local_node_resources
from rsam_dist.run_start import hold_lock
from rsam_dist.runs import (
    STATE_FILE,
    BadCheckpoint,
    RunDir,
    check_state_shapes,
    load_state,
    newest_valid_state,
    save_run_config,
    warn_skipped,
)
from rsam_dist.worker_cpus import AUTO, describe_worker, settle_cpus, worker_threads

CONTROLLER_RETRIES = 2
"""Worker-group starts Ray Train retries (each waits 60 s for resources) before the run fails."""
STOPPED_BY = "stopped_by"
"""The key of rank 0's return value that carries why the run stopped early (a non-finite loss)."""


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, str] | None:
    """Runs on each Ray Train worker: the same `fit` as `--local`, plus Ray's checkpoints."""
    timeline.mark("worker_start")
    import ray.train
    import torch

    # Train's per-report INFO line repeats every metric (our epoch line says it once); its logger
    # is named after the module's file, so LoggingConfig's "ray.train" filter misses it.
    from ray.train.v2._internal.execution import context as train_context

    from rsam_dist.distributed import World, pick_device
    from rsam_dist.precision import Precision
    from rsam_dist.recorder import EpochRecorder, TrialIdentity
    from rsam_dist.training import EpochResult, TrainState, fit, model_shapes

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    config = Config.model_validate(loop_config["config"])
    run = RunDir(**loop_config["run"])
    # Given a GPU: one-line error on one this PyTorch cannot run (the paper's K520). Given none: the
    # CPU, and CUDA is left alone (a g2 node's K520 is there but not offered to Ray).
    device = pick_device(config.train.device, gpu_assigned=config.scaling.gpus_per_worker > 0)
    if device.type == "cpu":
        # As many threads as CPUs Ray reserved for this worker: Ray's cluster launcher exports
        # OMP_NUM_THREADS=1 to every node's processes, which would hold an 8-CPU worker to one.
        torch.set_num_threads(worker_threads(config.scaling.cpus_per_worker))
    world = World.current(device)
    precision = Precision.resolve(config.train.precision, device).describe()
    timeline.mark("worker_ready", rank=world.rank, threads=torch.get_num_threads(), precision=precision)
    if not loop_config.get("quiet", False):
        print(describe_worker(world.rank, world.size, str(device), torch.get_num_threads(), precision,
                              config.optim.batch_size), flush=True)

    start = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a replaced worker group, or a resumed run
        start = load_checkpoint_or_older(checkpoint, run, model_shapes(config))
        if world.is_main:
            print(f"resuming from the checkpoint of epoch {start['epoch'] + 1}", flush=True)
    recorder = None
    if world.is_main:
        best = start["best_top1"] if start else -math.inf
        trial = TrialIdentity(**loop_config["trial"]) if loop_config.get("trial") else None
        recorder = EpochRecorder(config, run, quiet=loop_config.get("quiet", False), best_top1=best, trial=trial)

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        if recorder is not None:
            recorder.record(result, state)
        with tempfile.TemporaryDirectory() as directory:
            epoch_checkpoint = None
            if world.is_main:
                torch.save(state.state_dict(), Path(directory) / STATE_FILE)
                epoch_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(result.metrics, checkpoint=epoch_checkpoint)

    try:
        state = fit(config, on_epoch, resume_from=start, world=world)
    except NonFiniteLoss as stop:
        # Raised on every rank at the same step. Returned, not raised: Ray would count a raised
        # error as a worker failure and retry from the last checkpoint into the same NaN.
        if recorder is not None:
            recorder.logger.close()
        return {STOPPED_BY: str(stop)}
    if start is not None and state.epoch == start["epoch"] and state.last_metrics:
        # Resumed after its last epoch (a sweep killed as this trial finished): nothing ran, so
        # report the final metrics again for whoever listens (Tune's scheduler and results).
        ray.train.report(state.last_metrics)
    if recorder is not None:
        recorder.finish(state)


def load_checkpoint_or_older(checkpoint, run: RunDir, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The state in Ray's latest checkpoint or, when that file is bad, in the newest good older one.

    Ray Train hands back only its latest committed checkpoint; its older siblings sit in the same
    storage folder (`checkpoint_<timestamp>`, so names sort by age).
    """
    with checkpoint.as_directory() as directory:
        try:
            state = load_state(Path(directory) / STATE_FILE)
            check_state_shapes(state, shapes, Path(checkpoint.path) / STATE_FILE)
            return state
        except BadCheckpoint as err:
            warn_skipped(err)
    local = run.local
    if local is None:  # URI storage: no listing here; a bad newest checkpoint ends the run
        raise UserError(f"{run}: the newest checkpoint is unreadable; start a new run with another train.name")
    older = sorted(p / STATE_FILE for p in local.glob("checkpoint_*") if Path(checkpoint.path).name != p.name)
    state = newest_valid_state([p for p in older if p.is_file()], run, shapes)
    if state is None:
        raise UserError(f"{run}: no usable checkpoint; start a new run with another train.name")
    return state


def build_trainer(config: Config, run: RunDir, callbacks: Sequence[Any] = (), quiet: bool = False,
                  trial: dict[str, Any] | None = None):
    """The TorchTrainer for `config` (one that starts no idle Ray Data actor: lean_trainer), storing
    its checkpoints in `run`. `trial`: a sweep trial's {"label", "params"} (recorder.TrialIdentity),
    for its TensorBoard run."""
    import ray.train
    from ray.train.torch import TorchConfig

    from rsam_dist.lean_trainer import LeanTorchTrainer

    scaling = config.scaling
    use_gpu = scaling.gpus_per_worker > 0
    resources = {"CPU": scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return LeanTorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "run": {"storage": run.storage, "name": run.name},
                           "quiet": quiet, "trial": trial},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            # A worker group that cannot be placed in 60 s is a controller failure, retried for
            # ever by default; resources were checked before fit, so a few tries are plenty.
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures,
                                                   controller_failure_limit=CONTROLLER_RETRIES),
            callbacks=list(callbacks),
            # Ray Train's per-report INFO lines ("Reporting training result ...") drown ours.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def train_on_ray(run: RunDir, config: Config, address: str | None = None, resume: bool = False) -> dict:
    """Fit in `run` (already checked by run_start) on the Ray cluster at `address` (or a local
    one); returns the final metrics.

    A rerun in the same run directory continues from its last checkpoint (Ray Train V2 finds it in
    storage), which is what `resume` means here: the config was read back from that run.
    """
    from rsam_dist.ray_cluster import connect

    with hold_lock(run.local or run.path):
        settled = config
        if not address:  # workers share this disk: find (or download) the data once, fail fast here
            ensure_available(config.data)
            settled = settle_cpus(config, [local_node_resources() or {"CPU": float(os.cpu_count() or 1)}])
        need = None if settled.scaling.cpus_per_worker == AUTO else ResourceRequest.for_scaling(settled.scaling)
        with connect(address, need=need):
            timeline.mark("ray_ready")
            if need is None:  # a cluster's CPUs are known once connected
                settled = settle_cpus(config, live_node_resources() + (autoscaling_node_types() or []))
                ResourceRequest.for_scaling(settled.scaling).ensure_available()
            save_run_config(run, config)  # only now: Ray is up and the data is there (`auto` kept as asked)
            result = fit_trainer(build_trainer(settled, run))
    return dict(result.metrics or {})


def fit_trainer(trainer):
    """`trainer.fit()`, with a UserError raised on the workers surfacing as a UserError, a run
    stopped for a non-finite loss as NonFiniteLoss (exit 2), and Ctrl-C as KeyboardInterrupt (exit 130)."""
    interrupted = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if hasattr(trainer, "_register_sigint_handler"):
        # Train V2's own handler aborts the run, then leaves fit() returning an error or calls
        # sys.exit(0) inside ray.get (the process then exits 1): Ctrl-C would look like a failure.
        # Ours aborts the same way (the committed checkpoints stay) and remembers why the run ended.
        trainer._register_sigint_handler = lambda controller: _abort_on_ctrl_c(controller, interrupted)
    try:
        try:
            result = trainer.fit()
            timeline.mark("fit_returned")
        except Exception as error:  # noqa: BLE001 - Train V2 raises the workers' failure from fit()
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            raise_run_error(error, trainer)
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
    raise_run_error(result.error, trainer)
    returned = result.return_value
    if isinstance(returned, dict) and returned.get(STOPPED_BY):
        raise NonFiniteLoss(returned[STOPPED_BY])
    return result


def _abort_on_ctrl_c(controller, interrupted: threading.Event) -> None:
    """On the first Ctrl-C ask Train's controller to abort the run (fit() then returns); on a second
    one, stop waiting for it."""

    def on_sigint(signum, frame) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        print("rsam-dist: stopping the run (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        controller.abort.remote()

    signal.signal(signal.SIGINT, on_sigint)


def raise_run_error(error: Exception | None, trainer=None) -> None:
    """Re-raise a failed run's error; a UserError on the workers stays a UserError (exit 2), and so
    does a worker group Ray could not place (resources held by other work)."""
    if error is None:
        return
    failure = getattr(error, "controller_failure", None)
    if type(failure).__name__ == "WorkerGroupStartupTimeoutError":  # placed nowhere for 60 s, each try
        scaling = getattr(trainer, "scaling_config", None)
        asked = (f" ({scaling.num_workers} of {scaling.num_cpus_per_worker:g} CPU, {scaling.num_gpus_per_worker:g} GPU)"
                 if scaling else "")
        raise UserError(f"Ray could not start the run's workers{asked} in {CONTROLLER_RETRIES + 1} tries: the "
                        "cluster has the resources but other work holds them (see `ray status`); retry when "
                        "they are free") from None
    for failure in getattr(error, "worker_failures", {}).values():
        message = _user_error_message(failure)
        if message:
            raise UserError(message) from None
    raise error


def _user_error_message(failure: BaseException) -> str | None:
    """The message of a UserError raised on a worker, however Ray wrapped it on the way back."""
    for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
        if isinstance(candidate, UserError):
            return str(candidate).strip().splitlines()[-1]
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    text = str(failure)
    if marker in text:  # the worker's traceback, as text
        return text.rsplit(marker, 1)[1].strip().splitlines()[0]
    return None
