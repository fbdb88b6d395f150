"""`rsam-dist train`: the training loop on every worker of a Ray Train `TorchTrainer` (Train V2).

Ray sets up the process group (nccl on GPUs, gloo on CPUs); `fit` reads its rank from it. Rank 0
prints, writes TensorBoard and the best checkpoint; every rank calls `ray.train.report` each epoch
(a barrier), rank 0 with the epoch checkpoint. A worker that dies is replaced and the group
resumes from the last committed checkpoint (`train.max_failures`); rerunning with the same run
directory (`--resume`) does the same after the driver itself died.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsam_dist.config import Config
from rsam_dist.data import load_dataset
from rsam_dist.errors import UserError
from rsam_dist.runs import STATE_FILE, load_state, run_dir, save_run_config

# Quiet Ray's migration notices before Ray is imported (we are on the V2 API already).
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: the same `fit` as `--local`, plus Ray's checkpoints."""
    import ray.train
    import torch

    # Train's per-report INFO line repeats every metric (our epoch line says it once); its logger
    # is named after the module's file, so LoggingConfig's "ray.train" filter misses it.
    from ray.train.v2._internal.execution import context as train_context

    from rsam_dist.distributed import World, pick_device
    from rsam_dist.recorder import EpochRecorder
    from rsam_dist.training import EpochResult, TrainState, fit

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    config = Config.model_validate(loop_config["config"])
    path = loop_config["run_dir"]
    # Given a GPU: one-line error on one this PyTorch cannot run (the paper's K520). Given none: the
    # CPU, and CUDA is left alone (a g2 node's K520 is there but not offered to Ray).
    device = pick_device(config.train.device, gpu_assigned=config.scaling.gpus_per_worker > 0)
    if device.type == "cpu":
        # As many threads as CPUs Ray reserved for this worker: Ray's cluster launcher exports
        # OMP_NUM_THREADS=1 to every node's processes, which would hold an 8-CPU worker to one.
        torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    world = World.current(device)

    start = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a replaced worker group, or a resumed run
        with checkpoint.as_directory() as directory:
            start = load_state(Path(directory) / STATE_FILE)
        if world.is_main:
            print(f"resuming from the checkpoint of epoch {start['epoch'] + 1}", flush=True)
    recorder = EpochRecorder(config, path, quiet=loop_config.get("quiet", False)) if world.is_main else None

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        if recorder is not None:
            recorder.record(result, state)
        with tempfile.TemporaryDirectory() as directory:
            epoch_checkpoint = None
            if world.is_main:
                torch.save(state.state_dict(), Path(directory) / STATE_FILE)
                epoch_checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(result.metrics, checkpoint=epoch_checkpoint)

    state = fit(config, on_epoch, resume_from=start, world=world)
    if start is not None and state.epoch == start["epoch"] and state.last_metrics:
        # Resumed after its last epoch (a sweep killed as this trial finished): nothing ran, so
        # report the final metrics again for whoever listens (Tune's scheduler and results).
        ray.train.report(state.last_metrics)
    if recorder is not None:
        recorder.finish(state)


def build_trainer(config: Config, path: str, callbacks: Sequence[Any] = (), quiet: bool = False):
    """The TorchTrainer for `config`, storing under `path` (= train.storage/train.name)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = config.scaling
    use_gpu = scaling.gpus_per_worker > 0
    resources = {"CPU": scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    storage, name = path.rsplit("/", 1)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "run_dir": path, "quiet": quiet},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.train.max_failures),
            callbacks=list(callbacks),
            # Ray Train's per-report INFO lines ("Reporting training result ...") drown ours.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def train_on_ray(config: Config, address: str | None = None, resume: bool = False) -> tuple[str, dict]:
    """Fit on the Ray cluster at `address` (or a local one); returns (run dir, final metrics).

    A rerun with the same run directory continues from its last checkpoint (Ray Train V2 finds
    it in storage), which is what `resume` means here: the config was read back from that run.
    """
    from rsam_dist.ray_cluster import connect

    path = run_dir(config)
    if not resume:
        _refuse_to_overwrite(path)
    if not address:  # workers share this disk: find (or download) the data once, fail fast here
        load_dataset(config.data)
    save_run_config(path, config)
    with connect(address):
        result = fit_trainer(build_trainer(config, path))
    return path, dict(result.metrics or {})


def fit_trainer(trainer):
    """`trainer.fit()`, with a UserError raised on the workers surfacing as a UserError."""
    try:
        result = trainer.fit()
    except Exception as error:  # noqa: BLE001 - Train V2 raises the workers' failure from fit()
        raise_run_error(error)
    raise_run_error(result.error)
    return result


def raise_run_error(error: Exception | None) -> None:
    """Re-raise a failed run's error; a UserError on the workers stays a UserError (exit 2)."""
    if error is None:
        return
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


def _refuse_to_overwrite(path: str) -> None:
    from rsam_dist.runs import CONFIG_FILE, local_dir

    directory = local_dir(path)
    if directory is not None and (directory / CONFIG_FILE).exists():
        raise UserError(f"{path} already holds a run: use --resume {path}, or set another train.name")
