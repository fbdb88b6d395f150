"""Side-by-side timings of the two speed decisions of the training step, printed as ratios.

1. The down-sample network once per batch (ours) against once per glimpse (the author's code):
   one SGD step of the 4-glimpse model, forward + backward.
2. Batches sliced from tensors held whole (ours) against a per-sample Dataset + DataLoader with
   torchvision's ToTensor/Normalize (the usual CIFAR pipeline): images per second to build batches.

Runs without Ray, on the GPU when there is one:
    python benchmarks/bench_step.py [--repeats 15] [--glimpses 4] [--batch 128]
Each figure is the median of --repeats timings; the machines are noisy, so compare ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from author_loop import PerGlimpseRSAM  # the sibling script's reference model

from rsam_dist.config import DataConfig, ModelConfig
from rsam_dist.data import ImageSplit, make_synthetic
from rsam_dist.model import RSAM, rsam_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired_medians(functions: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function, run in alternation so that load on the machine hits
    all of them alike."""
    for function in functions.values():
        function()  # warm-up (allocations, cuDNN autotune)
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            started = time.perf_counter()
            function()
            synchronize(device)
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def bench_downsample_once(args, device: torch.device) -> None:
    config = ModelConfig(glimpses=args.glimpses)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    steps = {}
    for name, cls in (("once per batch", RSAM), ("once per glimpse", PerGlimpseRSAM)):
        torch.manual_seed(0)
        model = cls(config).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            loss = rsam_loss(model(images), labels, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[name] = step
    timings = paired_medians(steps, args.repeats, device)
    print(f"train step, {args.glimpses} glimpses, batch {args.batch} on {device}:")
    for name, seconds in timings.items():
        print(f"  down-sample {name:<17} {1000 * seconds:8.2f} ms (median of {args.repeats})")
    print(f"  speed-up of computing it once: {timings['once per glimpse'] / timings['once per batch']:.2f}x")


def bench_batches(args, device: torch.device) -> None:
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    split: ImageSplit = make_synthetic(DataConfig(name="synthetic", synthetic_train_size=4096)).train
    on_device = split.to(device)
    hwc = split.images.permute(0, 2, 3, 1).numpy()  # what torchvision's CIFAR10 holds
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])

    class PerSample(Dataset):
        def __len__(self):
            return len(hwc)

        def __getitem__(self, index):
            return transform(hwc[index]), int(split.labels[index])

    def sliced():
        order = torch.randperm(len(on_device), device=device)
        for start in range(0, len(order), args.batch):
            on_device.batch(order[start : start + args.batch])

    def loader():
        for images, labels in DataLoader(PerSample(), batch_size=args.batch, shuffle=True):
            images.to(device), labels.to(device)

    timings = paired_medians({"slice": sliced, "loader": loader}, max(3, args.repeats // 3), device)
    slice_seconds, loader_seconds = timings["slice"], timings["loader"]
    count = len(split)
    print(f"building batches of {args.batch} from {count} images on {device}:")
    print(f"  tensor slicing     {count / slice_seconds:12.0f} images/s")
    print(f"  Dataset+DataLoader {count / loader_seconds:12.0f} images/s")
    print(f"  speed-up of slicing: {loader_seconds / slice_seconds:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--glimpses", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bench_downsample_once(args, device)
    bench_batches(args, device)


if __name__ == "__main__":
    main()
