"""BatchNorm statistics for evaluation: precise ones recomputed from training batches, and a view
of the model with batch statistics (train mode) that leaves them untouched.

PyTorch's running statistics are moving averages (momentum 0.1) that start at mean 0, variance 1
and follow weights that keep changing, so after few steps they describe neither the data nor the
current model. `recompute_batchnorm_statistics` replaces them, before an evaluation, with the plain
average over a fixed number of training batches seen by the current weights: PreciseBN of Wu &
Johnson 2021, "Rethinking 'Batch' in BatchNorm" (Section 3). The variance is the mean of the
per-batch (Bessel-corrected) variances, one of the two estimators of fvcore's `update_bn_stats` and
the quantity the running average estimates too, only without the lag and the stale weights.

    recompute_batchnorm_statistics(model, (images for images in some_batches), world)
    with batch_statistics(model):
        output = model(test_images)      # each batch normalised by its own statistics
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rsam_dist.distributed import World


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm (SyncBatchNorm included) that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, image_batches: Iterable[torch.Tensor], world: World) -> int:
    """Set every BatchNorm's running mean and variance to the plain average of its batch statistics
    over `image_batches` (forward passes in train mode, no gradient), then average them over the
    ranks of `world`. A layer called several times per forward (shared across glimpses) averages
    over all its calls. Momentum, `num_batches_tracked` and the train/eval mode are restored.

    Every rank must pass the same number of batches (SyncBatchNorm's collectives pair them up).
    Returns the number of batches used.
    """
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # PyTorch's cumulative average: the k-th call weighs 1/k
    model.train()
    used = 0
    try:
        for images in image_batches:
            model(images)
            used += 1
    finally:
        for norm, (momentum, tracked) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(tracked)  # it counts training steps, not these passes
        model.train(was_training)
    if used == 0:
        raise ValueError("recompute_batchnorm_statistics needs at least one batch")
    average_over_ranks(norms, world)
    return used


def average_over_ranks(norms: list[_BatchNorm], world: World) -> None:
    """Replace each running mean and variance with its mean over ranks, in one all-reduce."""
    if not world.distributed:
        return
    buffers = [buffer for norm in norms for buffer in (norm.running_mean, norm.running_var)]
    mean = world.sum(torch.cat([buffer.flatten() for buffer in buffers])) / world.size
    for buffer, part in zip(buffers, mean.split([buffer.numel() for buffer in buffers]), strict=True):
        buffer.copy_(part.view_as(buffer))


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in train mode with BatchNorms that normalise by each batch's own statistics and do
    not update their running ones (PyTorch's track_running_stats=False); restored on exit."""
    norms = batchnorm_layers(model)
    was_training = model.training
    model.train()
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield model
    finally:
        for norm in norms:
            norm.track_running_stats = True
        model.train(was_training)
