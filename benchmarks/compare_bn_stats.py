"""Running against precise BatchNorm statistics: test top-1 per epoch and the cost of recomputing.

Training is the same under either `train.bn_stats` (running statistics never reach the gradient),
so one run per seed serves every arm: after each epoch the model is scored with its running
statistics, with precise statistics over K training batches (on a copy, for each K), and in train
mode (batch statistics). Prints medians over the seeds, and the seconds one recompute takes against
the epoch's training seconds. With --per-glimpse-batches K the same weights are also scored with
per-glimpse BatchNorm statistics (model.batchnorm_per_glimpse, precise over K batches): both
models compute the same function in train mode, so they train the same weights. No Ray; CPU or GPU.

    python benchmarks/compare_bn_stats.py configs/digits.yaml --set model.glimpses=1 --seeds 0 1 2
    python benchmarks/compare_bn_stats.py configs/cifar10.yaml --set data.name=synthetic \\
        --set data.synthetic_train_size=50000 --set data.synthetic_test_size=10000 --epochs 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict

import torch

from rsam_dist.config import load_config
from rsam_dist.data import Dataset, ImageSplit, load_dataset
from rsam_dist.distributed import World, pick_device
from rsam_dist.engine import evaluate
from rsam_dist.model import RSAM
from rsam_dist.training import EpochResult, TrainState, fit, precise_batchnorm_statistics


def with_label_noise(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """`fraction` of the training labels replaced by random classes, so that the easy synthetic data
    cannot be fitted perfectly within the run and the arms are compared below the ceiling."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    labels = dataset.train.labels.clone()
    noisy = torch.rand(len(labels), generator=generator) < fraction
    labels[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=generator)
    return Dataset(dataset.name, ImageSplit(dataset.train.images, labels), dataset.test)


BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def per_glimpse_top1(model, config, dataset, epoch: int, world: World, batches: int) -> float:
    """Test top-1 of the same weights with per-glimpse BatchNorm statistics (precise ones). In
    train mode both models compute the same function, so they train the same weights (up to float
    rounding): only evaluation differs, and one run serves both arms."""
    per_glimpse = config.model_copy(deep=True)
    per_glimpse.model.batchnorm_per_glimpse = True
    per_glimpse.train.bn_stats_batches = batches
    twin = RSAM(per_glimpse.model).to(world.device)
    weights = {name: value for name, value in model.state_dict().items() if not name.endswith(BUFFERS)}
    missing, unexpected = twin.load_state_dict(weights, strict=False)
    assert not unexpected and all(name.endswith(BUFFERS) for name in missing), (missing, unexpected)
    precise_batchnorm_statistics(twin, dataset, per_glimpse, epoch, world)
    return evaluate(twin, dataset.test, per_glimpse.model, world)["test_top1"]


def run_seed(args, seed: int, rows: dict) -> None:
    overrides = [*args.set, f"train.seed={seed}", "train.bn_stats=running", "train.mask_images=0"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    config = load_config(args.config, overrides)
    device = pick_device(config.train.device)
    world = World(0, 1, device)
    dataset = load_dataset(config.data)
    if args.label_noise:
        dataset = with_label_noise(dataset, args.label_noise, seed)
    dataset = dataset.to(device)

    def on_epoch(result: EpochResult, state: TrainState) -> None:
        metrics = result.metrics
        row = rows[result.epoch + 1]
        row["running"].append(metrics["test_top1"])
        row["train mode"].append(metrics.get("test_top1_trainmode", float("nan")))
        images_seen = len(dataset.train) // config.optim.batch_size * config.optim.batch_size
        row["train s"].append(images_seen / metrics["images_per_sec"])
        for batches in args.batches:
            model = copy.deepcopy(state.model)
            precise = config.model_copy(deep=True)
            precise.train.bn_stats_batches = batches
            started = time.perf_counter()
            precise_batchnorm_statistics(model, dataset, precise, result.epoch, world)
            row[f"recompute {batches} s"].append(time.perf_counter() - started)
            row[f"precise {batches}"].append(evaluate(model, dataset.test, config.model, world)["test_top1"])
        if args.per_glimpse_batches:
            top1 = per_glimpse_top1(state.model, config, dataset, result.epoch, world, args.per_glimpse_batches)
            row[f"per-glimpse {args.per_glimpse_batches}"].append(top1)

    fit(config, on_epoch, dataset=dataset, world=world)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], help="section.key=value, as rsam-dist train")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[5, 20, 50], help="K of each precise arm")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels randomised")
    parser.add_argument("--per-glimpse-batches", type=int, default=None,
                        help="also score the weights with per-glimpse statistics, precise over K batches")
    args = parser.parse_args()
    rows: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in args.seeds:
        run_seed(args, seed, rows)
    print(f"medians over seeds {args.seeds} of test top-1 (%) and seconds; {args.config} {' '.join(args.set)}")
    columns = list(rows[1])
    print("epoch  " + "  ".join(f"{name:>14}" for name in columns))
    for epoch, row in sorted(rows.items()):
        cells = []
        for name in columns:
            value = statistics.median(row[name])
            cells.append(f"{value:14.2f}" if name.endswith(" s") else f"{100 * value:14.1f}")
        print(f"{epoch:>5}  " + "  ".join(cells))
    per_seed = {name: [row[name] for _, row in sorted(rows.items())] for name in columns}
    print("per seed (epoch-major):", {name: [[round(100 * v, 1) for v in e] for e in values]
                                      for name, values in per_seed.items() if not name.endswith(" s")})


if __name__ == "__main__":
    main()
