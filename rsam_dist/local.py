"""`rsam-dist train --local`: the training loop in this process, no Ray."""

from __future__ import annotations

from rsam_dist.config import Config
from rsam_dist.errors import UserError
from rsam_dist.recorder import EpochRecorder
from rsam_dist.runs import latest_local_state, local_dir, run_dir, save_local_checkpoint, save_run_config
from rsam_dist.training import EpochResult, TrainState, fit


def train_local(config: Config, resume: bool = False) -> tuple[str, dict[str, float]]:
    """Train in-process; returns (run directory, last epoch's metrics)."""
    path = run_dir(config)
    directory = local_dir(path)
    if directory is None:
        raise UserError("--local runs need a local train.storage directory; drop --local to use Ray storage")
    start = latest_local_state(directory) if resume else None
    if resume and start is None:
        print(f"no checkpoint in {directory} yet: starting from epoch 1")
    save_run_config(path, config)
    recorder = EpochRecorder(config, path)

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        recorder.record(result, state)
        save_local_checkpoint(directory, state.state_dict(), config.train.keep_checkpoints)

    state = fit(config, on_epoch, resume_from=start)
    recorder.finish(state)
    return path, recorder.last_metrics
