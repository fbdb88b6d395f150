"""Where this process sits in a (possibly one-process) data-parallel group.

The training loop only talks to a `World`: it never asks Ray, torchrun or the environment. Ray
Train, or torchrun, initialises torch.distributed; `World.current()` reads what is there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(0, 1, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP over the group (nccl or gloo, whichever it was built with); the model itself alone."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place on a copy); the identity with one worker."""
        tensor = tensor.clone()
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def pick_device(requested: str, gpu_assigned: bool | None = None) -> torch.device:
    """The device for `train.device`: auto takes Ray's GPU for this worker, or cuda:0, or the CPU.

    `gpu_assigned` says, inside a Ray Train worker, whether the run asked Ray for GPUs
    (scaling.gpus_per_worker > 0); None outside Ray. A worker given none trains on the CPU without
    asking CUDA anything: its node may carry a GPU that is deliberately not offered to Ray (the
    GRID K520s of cluster/aws-g2.yaml), and probing that one warns or fails in every worker. A
    worker given a GPU first checks that this PyTorch can run it (one-line error if not).
    """
    from rsam_dist.errors import UserError

    if requested == "cpu":
        return torch.device("cpu")
    if gpu_assigned is False:
        if requested == "cuda":
            raise UserError("train.device=cuda but this run asks Ray for no GPU (scaling.gpus_per_worker=0): "
                            "set scaling.gpus_per_worker=1, or train.device=auto to train on CPUs")
        return torch.device("cpu")
    from rsam_dist.gpu_check import check_gpu_supported

    # A GPU too old for this PyTorch stops here, not mid-epoch; so does a given GPU CUDA cannot see.
    check_gpu_supported(gpu_assigned=bool(gpu_assigned))
    if not torch.cuda.is_available():
        if requested == "auto":
            return torch.device("cpu")
        raise UserError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    try:  # inside a Ray Train worker, the GPU Ray assigned
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return torch.device("cuda", torch.cuda.current_device())
