"""The training loop: `fit(config, on_epoch)` trains and evaluates RSAM for `train.epochs` epochs.

It knows nothing about Ray. Run it in one process (`rsam-dist train --local`), or on every
worker of a data-parallel group that someone else set up (Ray Train, torchrun): it reads its
rank from torch.distributed, takes its shard of every global batch, and reduces its metrics.
Whoever calls it decides what happens with each epoch's metrics and state (print, TensorBoard,
checkpoints) through `on_epoch`.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rsam_dist import timeline
from rsam_dist.batchnorm_stats import recompute_batchnorm_statistics
from rsam_dist.config import Config
from rsam_dist.data import Dataset, load_dataset, train_batches
from rsam_dist.distributed import World, pick_device
from rsam_dist.engine import evaluate, train_one_epoch
from rsam_dist.errors import UserError
from rsam_dist.model import RSAM, combined_scores
from rsam_dist.precision import Precision, memory_format
from rsam_dist.run_start import check_resume_fits


@dataclass
class EpochResult:
    epoch: int
    """0-based index of the epoch just finished."""
    metrics: dict[str, float]
    """train_loss, test_top1, test_top1_glimpse_<i>, test_top1_trainmode (BatchNorm with batch
    statistics; absent on tiny test sets), lr, images_per_sec, epoch_seconds, epoch."""
    masks: torch.Tensor | None = None
    """(glimpses, k, 32, 32) masks of the fixed probe images, on rank 0 only (else None)."""
    probe_images: torch.Tensor | None = None
    """(k, 3, 32, 32) the normalised probe images the masks belong to."""
    probe_labels: torch.Tensor | None = None
    """(k,) their true classes."""
    probe_predictions: torch.Tensor | None = None
    """(glimpses + 1, k) each glimpse's predicted class, then the combined prediction."""


@dataclass
class TrainState:
    """Everything a checkpoint holds; `state_dict()` is what goes to disk."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None = None
    """fp16's loss scale (None in fp32 and bf16), checkpointed so that a resumed run keeps it."""
    epoch: int = -1
    """Last finished epoch (-1: none yet)."""
    best_top1: float = -1.0
    last_metrics: dict[str, float] = field(default_factory=dict)
    """The metrics of epoch `epoch`, so a run resumed after its last epoch can still report them."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved config the state was made with (a resume checks that it fits)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain Python values only, so `torch.load(weights_only=True)` reads it back."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "best_top1": self.best_top1,
            "last_metrics": self.last_metrics,
            "config": self.config,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.best_top1 = state["best_top1"]
        self.last_metrics = state.get("last_metrics", {})
        set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, as tensors and ints (no pickled numpy or Python objects)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # is_initialized, not is_available: a CPU run never probes CUDA (a g2 node's K520).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():  # only a run that used CUDA saved CUDA states
        torch.cuda.set_rng_state_all(rng["cuda"])
    numpy_state = rng["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gauss"]))
    python_state = rng["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))


EpochCallback = Callable[[EpochResult, TrainState], None]


def build_state(config: Config, device: torch.device, world: World) -> TrainState:
    torch.manual_seed(config.train.seed)  # same initial weights on every rank (DDP also broadcasts)
    model = RSAM(config.model)
    if config.scaling.batchnorm == "sync" and world.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format(device))
    optim = config.optim
    # Weight decay on every parameter, BatchNorm and biases included, as the author's code does.
    optimizer = torch.optim.SGD(
        model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=optim.lr_decay)
    scaler = Precision.resolve(config.train.precision, device).grad_scaler()
    return TrainState(model, optimizer, scheduler, scaler, config=config.to_dict())


@torch.no_grad()
def look_at_probe(model: nn.Module, split, count: int, config: Config) -> dict[str, torch.Tensor]:
    """Masks and predictions of the first `count` test images (the same every epoch), on the CPU."""
    model.eval()
    images, labels = split.batch(torch.arange(count, device=split.labels.device))
    output = model(images)
    predictions = torch.cat([output.logits.argmax(-1), combined_scores(output, config.model).argmax(-1)[None]])
    return {"masks": output.masks.cpu(), "probe_images": images.cpu(), "probe_labels": labels.cpu(),
            "probe_predictions": predictions.cpu()}


def model_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of `config`'s model (to check checkpoints)."""
    with torch.device("meta"):  # no memory, no initialisation
        model = RSAM(config.model)
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def check_dataset_fits(dataset: Dataset, config: Config) -> None:
    if len(dataset.train) < config.optim.batch_size:
        raise UserError(
            f"{dataset.name} has {len(dataset.train)} training images, fewer than one batch of "
            f"{config.optim.batch_size}: raise data.limit_train or lower optim.batch_size"
        )


def precise_batchnorm_statistics(model: nn.Module, dataset: Dataset, config: Config, epoch: int, world: World) -> None:
    """Recompute the BatchNorm statistics from the first `train.bn_stats_batches` batches of this
    epoch's shuffle (this rank's share of each; averaged over ranks), for the evaluation after it."""
    batches = train_batches(
        len(dataset.train), config.optim.batch_size, epoch, config.train.seed, world.rank, world.size
    )
    images = (dataset.train.batch(indices.to(world.device))[0] for indices in batches)
    recompute_batchnorm_statistics(model, itertools.islice(images, config.train.bn_stats_batches), world)


def fit(
    config: Config,
    on_epoch: EpochCallback | None = None,
    resume_from: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    world: World | None = None,
) -> TrainState:
    """Train for the epochs `config` asks, from `resume_from` (a `TrainState.state_dict()`) if given.

    `dataset` may be passed in (already loaded); otherwise it is loaded from `config.data`.
    """
    device = world.device if world else pick_device(config.train.device)
    world = world or World.current(device)
    precision = Precision.resolve(config.train.precision, device)
    state = build_state(config, device, world)
    if resume_from is not None:
        check_resume_fits(resume_from.get("config"), config)
        state.load_state_dict(resume_from)
    timeline.mark("model_ready", rank=world.rank)
    dataset = (dataset or load_dataset(config.data)).to(device)
    timeline.mark("data_ready", rank=world.rank)
    check_dataset_fits(dataset, config)
    network, evaluated = world.wrap(state.model), state.model
    if config.train.compile:  # DDP first, then compile: Dynamo splits the graph at DDP's buckets
        network, evaluated = torch.compile(network), torch.compile(state.model)
    timeline.mark("loop_start", rank=world.rank)
    probe = dataset.test.images[: config.train.mask_images]

    for epoch in range(state.epoch + 1, config.train.epochs):
        started = time.perf_counter()
        batches = train_batches(
            len(dataset.train), config.optim.batch_size, epoch, config.train.seed, world.rank, world.size, device
        )
        lr = state.optimizer.param_groups[0]["lr"]
        train_loss, images = train_one_epoch(
            network, state.optimizer, dataset.train, batches, config.model, world, precision, state.scaler
        )
        train_seconds = time.perf_counter() - started
        state.scheduler.step()
        # Statistics and evaluation use the bare module: DDP's forward would sync buffers, a
        # collective that ranks with different shard sizes would call a different number of times.
        if config.train.bn_stats == "precise":
            precise_batchnorm_statistics(state.model, dataset, config, epoch, world)
        metrics = evaluate(evaluated, dataset.test, config.model, world, precision)
        probe_view = {}
        if world.is_main and len(probe):
            probe_view = look_at_probe(state.model, dataset.test, len(probe), config)
        metrics.update(
            epoch=epoch + 1,
            train_loss=train_loss,
            lr=lr,
            images_per_sec=images / max(train_seconds, 1e-9),
            epoch_seconds=time.perf_counter() - started,
        )
        state.epoch = epoch
        state.best_top1 = max(state.best_top1, metrics["test_top1"])
        state.last_metrics = metrics
        if on_epoch is not None:
            on_epoch(EpochResult(epoch, metrics, **probe_view), state)
        timeline.mark("epoch_done", rank=world.rank, epoch=epoch + 1)
    return state
