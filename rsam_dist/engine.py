"""One epoch of training and one evaluation: loops over tensors that return plain numbers.

Both work on this rank's share and reduce over the `World`, so their results are global.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from rsam_dist.batchnorm_stats import batch_statistics
from rsam_dist.config import ModelConfig
from rsam_dist.data import ImageSplit, test_shard
from rsam_dist.distributed import World
from rsam_dist.loss_watch import LOSS_CHECK_STEPS, stop_if_not_finite
from rsam_dist.metrics import glimpse_metric
from rsam_dist.model import combined_scores, rsam_loss
from rsam_dist.precision import FP32, Precision

EVAL_BATCH = 500
"""Test images per evaluation forward on a CPU: cache-sized."""


def eval_batch_size(device: torch.device) -> int:
    """Images per evaluation forward: EVAL_BATCH on CPUs; on a GPU as many as keep it busy (RSAM at
    inference holds ~0.1 MB of activations an image)."""
    return 5000 if device.type == "cuda" else EVAL_BATCH

TRAINMODE_BATCHES = 2
"""Test batches per rank scored a second time in train mode (the whole test set of digits; 1,000
of CIFAR-10's 10,000 images per worker, which adds ~1% to a CIFAR-10 epoch instead of ~7%)."""


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: ImageSplit,
    batches: Iterable[torch.Tensor],
    model_config: ModelConfig,
    world: World,
    precision: Precision = FP32,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    """Train on this rank's `batches`; returns (mean loss over all ranks, images seen by all ranks).

    Nothing in the loop waits for the device but the non-finite check every LOSS_CHECK_STEPS steps:
    the loss is summed on it. `scaler` (fp16 only) scales the loss so small gradients survive.
    """
    model.train()
    device = split.labels.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for indices in batches:
        images, labels = split.batch(indices.to(device))
        with precision.autocast():
            loss = rsam_loss(model(images), labels, model_config)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        loss_sum += loss.detach()
        steps += 1
        local_batch = labels.shape[0]
        if steps % LOSS_CHECK_STEPS == 0:  # a NaN stops the run now, not at the epoch's end
            stop_if_not_finite(loss_sum, world, steps, optimizer)
    stop_if_not_finite(loss_sum, world, steps, optimizer)
    totals = world.sum(torch.stack([loss_sum, torch.tensor(float(steps), device=device)]))
    mean_loss = (totals[0] / totals[1].clamp(min=1)).item()
    images_seen = steps * local_batch * world.size if steps else 0
    return mean_loss, images_seen


@torch.no_grad()
def evaluate(
    model: nn.Module, split: ImageSplit, model_config: ModelConfig, world: World, precision: Precision = FP32
) -> dict[str, float]:
    """Top-1 of the combined prediction and of each glimpse, over the whole split exactly once.

    Also `test_top1_trainmode`: the combined top-1 with BatchNorm in train mode (each batch of
    ~EVAL_BATCH test images normalised by its own statistics, the running ones left as they are), on
    the first TRAINMODE_BATCHES batches of each rank, to keep it cheap. Where it differs from
    `test_top1`, evaluation measures BatchNorm's statistics rather than the weights. It is left out
    when a batch would hold fewer than 2 images.
    """
    model.eval()
    device = split.labels.device
    shard = test_shard(len(split), world.rank, world.size).to(device)
    # The same number of batches on every rank, so that SyncBatchNorm's collectives pair up.
    largest_shard = math.ceil(len(split) / world.size)
    batch_count = max(1, math.ceil(largest_shard / eval_batch_size(device)))
    trainmode_batches = TRAINMODE_BATCHES if len(split) // world.size // batch_count >= 2 else 0
    glimpses = model_config.glimpses
    # combined, each glimpse, images; then train-mode combined, train-mode images
    correct = torch.zeros(glimpses + 4, device=device)
    for batch, indices in enumerate(shard.tensor_split(batch_count)):
        images, labels = split.batch(indices)
        with precision.autocast():
            output = model(images)
        correct[0] += (combined_scores(output, model_config).argmax(-1) == labels).sum()
        correct[1 : glimpses + 1] += (output.logits.argmax(-1) == labels).sum(-1)
        correct[glimpses + 1] += labels.numel()
        if batch < trainmode_batches:
            with batch_statistics(model), precision.autocast():
                trainmode_scores = combined_scores(model(images), model_config)
            correct[-2] += (trainmode_scores.argmax(-1) == labels).sum()
            correct[-1] += labels.numel()
    totals = world.sum(correct)
    count = totals[glimpses + 1].clamp(min=1)
    metrics = {"test_top1": (totals[0] / count).item()}
    for glimpse in range(glimpses):
        metrics[glimpse_metric(glimpse + 1)] = (totals[glimpse + 1] / count).item()
    if trainmode_batches:
        metrics["test_top1_trainmode"] = (totals[-2] / totals[-1].clamp(min=1)).item()
    return metrics
