"""`rsam-dist train --local`: the training loop in this process, no Ray."""

from __future__ import annotations

import math

from rsam_dist.config import Config
from rsam_dist.data import load_dataset
from rsam_dist.errors import UserError
from rsam_dist.recorder import EpochRecorder
from rsam_dist.run_start import hold_lock
from rsam_dist.runs import RunDir, latest_local_state, save_local_checkpoint, save_run_config
from rsam_dist.training import EpochResult, TrainState, check_dataset_fits, fit, model_shapes


def train_local(run: RunDir, config: Config, resume: bool = False) -> dict[str, float]:
    """Train in-process in `run` (already checked by run_start); returns the last epoch's metrics."""
    directory = run.local
    if directory is None:
        raise UserError("--local runs need a local train.storage directory; drop --local to use Ray storage")
    with hold_lock(directory):
        start = latest_local_state(directory, model_shapes(config)) if resume else None
        if resume and start is None:
            print(f"no checkpoint in {directory} yet: starting from epoch 1", flush=True)
        dataset = load_dataset(config.data)
        check_dataset_fits(dataset, config)
        save_run_config(run, config)  # only now: every check has passed
        print(describe_in_process(config), flush=True)
        best = start["best_top1"] if start else -math.inf
        recorder = EpochRecorder(config, run, best_top1=best)

        def on_epoch(result: EpochResult, state: TrainState) -> None:
            recorder.record(result, state)
            save_local_checkpoint(directory, state.state_dict(), config.train.keep_checkpoints)

        state = fit(config, on_epoch, resume_from=start, dataset=dataset)
        recorder.finish(state)
        return recorder.last_metrics or dict(state.last_metrics)


def describe_in_process(config: Config) -> str:
    """The same first line as a Ray worker's: this process's device, threads and precision."""
    import torch

    from rsam_dist.distributed import pick_device
    from rsam_dist.precision import Precision
    from rsam_dist.worker_cpus import describe_worker

    device = pick_device(config.train.device)
    precision = Precision.resolve(config.train.precision, device).describe()
    return describe_worker(0, 1, str(device), torch.get_num_threads(), precision, config.optim.batch_size)
