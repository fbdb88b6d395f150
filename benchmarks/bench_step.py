"""Side-by-side timings of the two speed decisions of the training step, printed as ratios.

1. The down-sample network once per batch (ours) against once per glimpse (the author's code):
   one SGD step of the 4-glimpse model, forward + backward.
2. Batches sliced from tensors held whole (ours) against a per-sample Dataset + DataLoader with
   torchvision's ToTensor/Normalize (the usual CIFAR pipeline): images per second to build batches.
3. What evaluation adds to a CIFAR-10 epoch (390 steps): precise BatchNorm statistics over
   train.bn_stats_batches batches, and the train-mode view of the test set (engine.TRAINMODE_BATCHES
   batches of 500), each as seconds and as a share of the epoch's training steps.

Runs without Ray, on the GPU when there is one:
    python benchmarks/bench_step.py [--repeats 15] [--glimpses 4] [--batch 128] [--sections 1 2 3]
Each figure is the median of --repeats timings; the machines are noisy, so compare ratios.

3. With --table-row (on a GPU): the training and test throughput of one trial of that setting while
   --trials-per-gpu trials share the GPU (each in its own process, as Ray runs them), printed as a
   row for rsam_dist/plan/throughput.yaml, which `rsam-dist plan --cluster` estimates GPU time from:
    python benchmarks/bench_step.py --table-row --glimpses 4 --batch 128 --trials-per-gpu 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rsam_dist.config import DataConfig, ModelConfig
from rsam_dist.data import ImageSplit, make_synthetic
from rsam_dist.model import RSAM, RSAMOutput, rsam_loss


class PerGlimpseRSAM(RSAM):
    """The author's order of work: the down-sample network re-run at every glimpse."""

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> RSAMOutput:
        image = image.detach()
        zeros = image.new_zeros(image.shape[0], self.config.hidden_size)
        context, glimpse_state = (zeros, zeros), (zeros, zeros)
        logits, masks = [], []
        for step in range(self.config.glimpses):
            context = self.context_lstm(self.attention_input(image), context)
            mask = self.mask_decoder(context[0])
            glimpse_state = self.glimpse_lstm(self.glimpse_net(mask.unsqueeze(1) * image), glimpse_state)
            logits.append(self.classifier(glimpse_state[0]))
            masks.append(mask)
            if self.config.feedback and step < self.config.glimpses - 1:
                context = self.context_lstm(glimpse_state[0], context)
        return RSAMOutput(torch.stack(logits), torch.stack(masks))


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


def _one_trial(setting, budget_s: float, start, results) -> None:
    """One trial's process: wait for the others, then time the step (measure_steps) on the GPU."""
    from rsam_dist.plan.measure import measure_steps

    start.wait()
    timing = measure_steps([setting], budget_s)[setting]
    results.put((setting.batch / timing.train_step_s, 1 / timing.eval_image_s))


def table_row(args) -> None:
    import multiprocessing
    import time

    import yaml

    from rsam_dist.plan.measure import StepSetting

    if not torch.cuda.is_available():
        raise SystemExit("--table-row measures a GPU and this machine has none")
    setting = StepSetting(glimpses=args.glimpses, hidden_size=args.hidden_size, feedback=True,
                          attention_input="downsample", batch=args.batch, threads=1, device="cuda")
    context = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    start, results = context.Barrier(args.trials_per_gpu), context.Queue()
    workers = [context.Process(target=_one_trial, args=(setting, args.budget, start, results))
               for _ in range(args.trials_per_gpu)]
    for worker in workers:
        worker.start()
    rates = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    row = {"gpu": torch.cuda.get_device_name(0), **{k: getattr(setting, k) for k in
           ("glimpses", "hidden_size", "feedback", "attention_input", "batch")},
           "trials_per_gpu": args.trials_per_gpu,
           "train_images_per_s": round(statistics.median(r[0] for r in rates), 1),
           "eval_images_per_s": round(statistics.median(r[1] for r in rates), 1),
           "source": f"benchmarks/bench_step.py --table-row, torch {torch.__version__}, median of "
                     f"{args.trials_per_gpu} concurrent trial(s)",
           "as_of": time.strftime("%Y-%m-%d")}
    print(yaml.safe_dump([row], sort_keys=False).rstrip())


def bench_evaluation_extras(args, device: torch.device) -> None:
    from rsam_dist.batchnorm_stats import batch_statistics, recompute_batchnorm_statistics
    from rsam_dist.config import TrainConfig
    from rsam_dist.distributed import World
    from rsam_dist.engine import EVAL_BATCH, TRAINMODE_BATCHES

    config = ModelConfig(glimpses=args.glimpses)
    torch.manual_seed(0)
    model = RSAM(config).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    test_images = torch.randn(EVAL_BATCH, 3, 32, 32, device=device)
    stats_batches = TrainConfig().bn_stats_batches
    world = World(0, 1, device)

    def step():
        model.train()
        loss = rsam_loss(model(images), labels, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def precise():
        recompute_batchnorm_statistics(model, (images for _ in range(stats_batches)), world)

    @torch.no_grad()
    def eval_batch():
        model.eval()(test_images)

    @torch.no_grad()
    def trainmode_batch():
        with batch_statistics(model):
            model(test_images)

    functions = {"step": step, "precise": precise, "eval": eval_batch, "trainmode": trainmode_batch}
    timings = paired_medians(functions, max(3, args.repeats // 3), device)
    epoch_steps, test_images_count = 50_000 // args.batch, 10_000
    training = epoch_steps * timings["step"]
    evaluation = test_images_count / EVAL_BATCH * timings["eval"]
    trainmode = TRAINMODE_BATCHES * timings["trainmode"]
    print(f"per CIFAR-10 epoch ({epoch_steps} steps of {args.batch}, {args.glimpses} glimpses) on {device}:")
    print(f"  training steps                        {training:8.2f} s")
    print(f"  precise BatchNorm statistics ({stats_batches} batches) "
          f"{timings['precise']:8.2f} s  {100 * timings['precise'] / training:5.1f}% of training")
    print(f"  evaluation of {test_images_count} test images          {evaluation:8.2f} s  "
          f"{100 * evaluation / training:5.1f}%")
    print(f"  train-mode view ({TRAINMODE_BATCHES} x {EVAL_BATCH} images)       {trainmode:8.2f} s  "
          f"{100 * trainmode / training:5.1f}%  (the whole test set: "
          f"{100 * test_images_count / EVAL_BATCH * timings['trainmode'] / training:.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--glimpses", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--table-row", action="store_true", help="Print a throughput.yaml row for this GPU.")
    parser.add_argument("--trials-per-gpu", type=int, default=1, help="With --table-row: trials sharing the GPU.")
    parser.add_argument("--hidden-size", type=int, default=256, help="With --table-row: the LSTM width.")
    parser.add_argument("--budget", type=float, default=5.0, help="With --table-row: seconds of timed steps.")
    parser.add_argument("--sections", type=int, nargs="+", choices=[1, 2, 3], default=[1, 2, 3])
    args = parser.parse_args()
    if args.table_row:
        table_row(args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sections = {1: bench_downsample_once, 2: bench_batches, 3: bench_evaluation_extras}
    for number in args.sections:
        sections[number](args, device)


if __name__ == "__main__":
    main()
