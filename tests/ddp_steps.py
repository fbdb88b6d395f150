"""Data-parallel steps for the DDP tests: the real `fit` on N processes (torch.multiprocessing, no
Ray), and what one synchronous step must give, computed in this process.

    parameters = fit_on_ranks(tmp_path, "gloo", ["cpu", "cpu"], ONE_STEP)   # one dict per rank
    expected = step_on_average_gradient(shards, ONE_STEP, "cpu")
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rsam_dist.config import DEBUG_MODEL, load_config
from rsam_dist.data import load_dataset, train_batches
from rsam_dist.distributed import World
from rsam_dist.model import rsam_loss
from rsam_dist.training import build_state, fit

ONE_STEP = ("data.name=digits", *DEBUG_MODEL, "data.limit_train=64", "data.limit_test=40", "optim.batch_size=64",
            "train.epochs=1", "train.mask_images=0")
"""One global batch of 64 digits: exactly one optimiser step in the one epoch."""


def reproducible_kernels() -> None:
    """One CPU thread, and on GPUs deterministic cuDNN without TF32, so that a rank and this process
    compute the same shard the same way."""
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().cpu().clone() for name, parameter in model.named_parameters()}


def _rank_main(rank: int, backend: str, devices: list[str], overrides: tuple[str, ...], out: str) -> None:
    reproducible_kernels()
    device = torch.device(devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{out}/rendezvous", rank=rank, world_size=len(devices))
    try:
        state = fit(load_config(None, overrides), world=World(rank, len(devices), device))
        torch.save(parameters(state.model), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def fit_on_ranks(out: Path, backend: str, devices: list[str], overrides: tuple[str, ...]) -> list[dict]:
    """`fit` on one process per entry of `devices`, in a `backend` group; each rank's parameters."""
    # spawn: a fork of a process whose OpenMP pool or CUDA context is live can hang.
    mp.start_processes(_rank_main, args=(backend, devices, overrides, str(out)), nprocs=len(devices),
                       start_method="spawn")
    return [torch.load(out / f"rank{rank}.pt") for rank in range(len(devices))]


def rank_shards(overrides: tuple[str, ...], world_size: int) -> list[torch.Tensor]:
    """Each rank's share of the first global batch."""
    config = load_config(None, overrides)
    examples = config.data.limit_train
    return [next(train_batches(examples, config.optim.batch_size, 0, config.train.seed, rank, world_size))
            for rank in range(world_size)]


def step_on_average_gradient(shards: list[torch.Tensor], overrides: tuple[str, ...],
                             device: str) -> dict[str, torch.Tensor]:
    """One optimiser step (the run's own SGD: momentum, weight decay) on the mean of each shard's
    gradient, each shard's BatchNorm statistics its own, in this process on `device`."""
    reproducible_kernels()
    config = load_config(None, overrides)
    split = load_dataset(config.data).train.to(device)
    gradients = []
    for shard in shards:
        model = build_state(config, torch.device(device), World()).model.train()
        images, labels = split.batch(shard.to(device))
        rsam_loss(model(images), labels, config.model).backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    state = build_state(config, torch.device(device), World())
    for name, parameter in state.model.named_parameters():
        parameter.grad = sum(gradient[name] for gradient in gradients) / len(gradients)
    state.optimizer.step()
    return parameters(state.model)


def initial_parameters(overrides: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return parameters(build_state(load_config(None, overrides), torch.device("cpu"), World()).model)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)
