"""What only a GPU can show: nccl DDP, two processes sharing one GPU, SyncBatchNorm, fractional-GPU
sweep trials, and the CUDA RNG in checkpoints. Marked `gpu`: `make test-gpu` runs them (a few
minutes on one GPU); without CUDA they are skipped with that reason.

The DDP checks are those of test_ddp.py on CUDA tensors: one step on two shards leaves both ranks
with the same parameters, one SGD step on the average of the shards' gradients. Tolerances on a
GPU: deterministic cuDNN without TF32 on both sides; a step on one shard alone lands 2.5e-3 away.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from ddp_steps import ONE_STEP, fit_on_ranks, max_difference, rank_shards, step_on_average_gradient

from rsam_dist.training import rng_state, set_rng_state

pytestmark = pytest.mark.gpu

GPU_ONE_STEP = (*ONE_STEP, "train.device=cuda")
GPU_AVERAGING_TOLERANCE = 1e-6
"""Ranks and this process run the same deterministic kernels; the all-reduce's rounding of the sum
of two gradients, times lr 0.01, is far below this."""


def _assert_averaged(ranks: list[dict], overrides: tuple[str, ...]) -> None:
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
    shards = rank_shards(overrides, 2)
    expected = step_on_average_gradient(shards, overrides, "cuda:0")
    assert max_difference(ranks[0], expected) <= GPU_AVERAGING_TOLERANCE
    for alone in (shards[:1], shards[1:]):
        assert max_difference(ranks[0], step_on_average_gradient(alone, overrides, "cuda:0")) > 1e-3


def test_nccl_ddp_between_two_gpus(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("nccl needs a GPU per rank and this machine has one: "
                    "test_two_processes_share_one_gpu_with_gloo covers DDP on CUDA tensors here")
    _assert_averaged(fit_on_ranks(tmp_path, "nccl", ["cuda:0", "cuda:1"], GPU_ONE_STEP), GPU_ONE_STEP)


def test_two_processes_share_one_gpu_with_gloo(tmp_path):
    _assert_averaged(fit_on_ranks(tmp_path, "gloo", ["cuda:0", "cuda:0"], GPU_ONE_STEP), GPU_ONE_STEP)


SYNC_BN = (*GPU_ONE_STEP, "scaling.num_workers=2", "scaling.gpus_per_worker=1", "scaling.batchnorm=sync")
SYNC_BN_TOLERANCE = 1e-5
"""SyncBatchNorm merges the ranks' statistics (sums, then a variance from them) where one process
normalises the 64 images at once: the same statistics up to float32 rounding. Plain BatchNorm on
two shards of 32 moves the step by the shards' own statistics: 2.9e-3 measured on CPUs (asserted
below to exceed 1e-4 on the GPU)."""


def test_sync_batchnorm_two_ranks_step_as_one_process_on_the_whole_batch(tmp_path):
    two_gpus = torch.cuda.device_count() >= 2
    backend, devices = ("nccl", ["cuda:0", "cuda:1"]) if two_gpus else ("gloo", ["cuda:0", "cuda:0"])
    ranks = fit_on_ranks(tmp_path, backend, devices, SYNC_BN)
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    whole_batch = torch.cat(rank_shards(SYNC_BN, 2))
    single = step_on_average_gradient([whole_batch], GPU_ONE_STEP, "cuda:0")  # one process, plain BN, 64 images
    assert max_difference(ranks[0], single) <= SYNC_BN_TOLERANCE
    per_shard = step_on_average_gradient(rank_shards(SYNC_BN, 2), GPU_ONE_STEP, "cuda:0")  # plain BN per rank
    assert max_difference(per_shard, single) > 10 * SYNC_BN_TOLERANCE


def test_checkpoints_carry_the_cuda_rng():
    torch.cuda.manual_seed_all(3)
    saved = rng_state()
    assert len(saved["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(4, device="cuda")
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # as a checkpoint is read back
    torch.cuda.manual_seed_all(99)
    set_rng_state(loaded)
    assert torch.equal(torch.rand(4, device="cuda"), expected)


@pytest.mark.ray
def test_four_single_worker_trials_share_one_gpu(tmp_path, ray_address):
    from ray.tune import ExperimentAnalysis
    from sweep_files import read_rows, write_sweep

    from rsam_dist.runs import load_state
    from rsam_dist.sweep import load_sweep, run_sweep

    sweep_file = write_sweep(tmp_path, search={"model.glimpses": {"grid": [1, 2, 3, 4]}}, set={"train.epochs": 2},
                             trial={"num_workers": 1, "gpus_per_worker": 0.25, "cpus_per_worker": 0.5},
                             max_concurrent_trials=4)
    directory = run_sweep(load_sweep(sweep_file), address=ray_address)
    rows = read_rows(directory / "results.csv")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}
    for row in rows:  # each trained on the GPU: its checkpoint holds a CUDA RNG state
        checkpoint = sorted(Path(row["run_dir"]).glob("checkpoint_*"))[-1]
        assert load_state(checkpoint / "state.pt")["rng"]["cuda"]
    # They ran at once: the intervals [start, end] of the trials overlap.
    spans = []
    for trial in ExperimentAnalysis(str(directory / "tune")).trials:
        end = trial.last_result["timestamp"]
        spans.append((end - trial.last_result["time_total_s"], end))
    most_at_once = max(sum(start <= moment <= end for start, end in spans) for moment, _ in spans)
    assert most_at_once >= 2, spans
