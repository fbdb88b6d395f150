"""RSAM on one GPU, torch only (no Ray): what `benchmarks/gpu.sh` runs, in under 5 minutes.

On a CIFAR-10-size synthetic set (50,000 train / 10,000 test images, held on the GPU) at 4
glimpses and batch 128, rsam-dist's own engine (rsam_dist/engine.py) is timed in these arms:
  * fp32 and bf16 (torch.autocast), eager;
  * compiled: torch.compile of the model (`train.compile: true`), in the default precision;
  * graphed: torch.compile mode="reduce-overhead" (CUDA graphs of the fixed-shape step), which
    rsam-dist does not use yet: this arm says whether it is worth adding;
then packed trials: 1, 2, 4 and 8 processes training at once on the same GPU (what fractional
GPUs in a sweep do), with their aggregate images/s. It also compares evaluation batches of 500
(the CPU size) and 5,000 (the GPU size). Each compiled arm checks its loss against eager's.

    bash benchmarks/gpu.sh                                        # on a GPU machine
    python benchmarks/gpu_bench.py --device cpu --train-size 512 --test-size 256 --no-compile --packed 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp

from rsam_dist.config import Config, DataConfig, ModelConfig
from rsam_dist.data import make_synthetic, train_batches
from rsam_dist.distributed import World
from rsam_dist.engine import evaluate, train_one_epoch
from rsam_dist.precision import Precision, memory_format
from rsam_dist.training import build_state


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(config: ModelConfig, device: torch.device, compile_mode: str | None = None,
          layout: torch.memory_format | None = None):
    """The model and optimizer as `fit` builds them; compiled, or in another layout, if asked."""
    state = build_state(Config(model=config), device, World(device=device))
    if layout is not None:
        state.model.to(memory_format=layout)
    network = state.model if compile_mode is None else torch.compile(state.model, mode=compile_mode)
    return state.model, network, state.optimizer


def time_arm(name: str, args, dataset, device: torch.device, precision: Precision, compile_mode: str | None,
             layout: torch.memory_format | None = None) -> dict:
    config = ModelConfig(glimpses=args.glimpses)
    model, network, optimizer = build(config, device, compile_mode, layout)
    world = World(device=device)
    scaler = precision.grad_scaler()
    warm = [torch.arange(i * args.batch, (i + 1) * args.batch, device=device) for i in range(args.warmup_steps)]
    started = time.perf_counter()
    first_loss, _ = train_one_epoch(network, optimizer, dataset.train, warm[:1], config, world, precision, scaler)
    train_one_epoch(network, optimizer, dataset.train, warm[1:], config, world, precision, scaler)
    evaluate(network, dataset.test, config, world, precision)  # compiles the eval graph too
    synchronize(device)
    warmup = time.perf_counter() - started
    epochs, evals = [], []
    for epoch in range(args.epochs):
        batches = train_batches(len(dataset.train), args.batch, epoch, seed=0, device=device)
        started = time.perf_counter()
        _, images = train_one_epoch(network, optimizer, dataset.train, batches, config, world, precision, scaler)
        synchronize(device)
        epochs.append(time.perf_counter() - started)
        started = time.perf_counter()
        top1 = evaluate(network, dataset.test, config, world, precision)["test_top1"]
        synchronize(device)
        evals.append(time.perf_counter() - started)
    epoch = statistics.median(epochs)
    steps = len(dataset.train) // args.batch
    result = {"arm": name, "warmup_s": warmup, "epoch_s": epoch, "step_ms": 1000 * epoch / steps,
              "images_per_s": images / epoch, "eval_s": statistics.median(evals), "first_loss": first_loss,
              "top1": top1}
    print(f"{name:<26} step {result['step_ms']:7.2f} ms  epoch {epoch:6.2f} s ({result['images_per_s']:8.0f} img/s)"
          f"  eval {result['eval_s']:5.2f} s  warm-up/compile {warmup:5.1f} s  first loss {first_loss:.4f}",
          flush=True)
    return result


def eval_batches(args, dataset, device: torch.device) -> None:
    """evaluate() at the CPU's batch (500) and the GPU's (5,000), same model and data."""
    import rsam_dist.engine as engine

    config = ModelConfig(glimpses=args.glimpses)
    model, _, _ = build(config, device)
    world, fp32 = World(device=device), Precision("fp32", device.type)
    original = engine.eval_batch_size
    try:
        for size in (500, 5000):
            engine.eval_batch_size = lambda _device, size=size: size
            evaluate(model, dataset.test, config, world, fp32)
            synchronize(device)
            started = time.perf_counter()
            evaluate(model, dataset.test, config, world, fp32)
            synchronize(device)
            print(f"evaluation of {len(dataset.test)} images at batch {size:>5}: "
                  f"{time.perf_counter() - started:6.3f} s", flush=True)
    finally:
        engine.eval_batch_size = original


# --- packed trials: N processes on one GPU ---------------------------------------------------


def packed_worker(rank: int, args, precision_name: str, barrier, results) -> None:
    device = torch.device(args.device)
    torch.set_num_threads(max(1, (torch.get_num_threads()) // args.current_pack))
    config = ModelConfig(glimpses=args.glimpses)
    data = make_synthetic(DataConfig(name="synthetic", synthetic_train_size=args.packed_train_size,
                                     synthetic_test_size=1, split_seed=rank)).to(device)
    model, network, optimizer = build(config, device, None)
    world, precision = World(device=device), Precision(precision_name, device.type)
    scaler = precision.grad_scaler()
    batches = list(train_batches(len(data.train), args.batch, 0, seed=rank, device=device))

    def run(count: int) -> None:
        chosen = [batches[i % len(batches)] for i in range(count)]
        train_one_epoch(network, optimizer, data.train, chosen, config, world, precision, scaler)

    run(args.warmup_steps)
    synchronize(device)
    barrier.wait()
    started = time.time()
    run(args.packed_steps)
    synchronize(device)
    results[rank] = (started, time.time())


def packed(args, precision_name: str) -> list[dict]:
    context = mp.get_context("spawn")
    rows = []
    single = None
    for count in args.packed:
        args.current_pack = count
        barrier = context.Barrier(count)
        results = context.Manager().dict()
        processes = [context.Process(target=packed_worker, args=(rank, args, precision_name, barrier, results))
                     for rank in range(count)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        if any(process.exitcode for process in processes) or len(results) != count:
            raise RuntimeError(f"a packed trial failed with {count} processes")
        window = max(end for _, end in results.values()) - min(start for start, _ in results.values())
        rate = count * args.packed_steps * args.batch / window
        single = single or rate
        rows.append({"processes": count, "images_per_s": rate, "vs_one": rate / single})
        print(f"packed trials x{count}: {rate:9.0f} img/s aggregate ({rate / single:.2f}x one trial)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-size", type=int, default=50_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--glimpses", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per arm (median)")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled and graphed arms")
    parser.add_argument("--packed", type=int, nargs="*", default=[1, 2, 4, 8], help="processes sharing the device")
    parser.add_argument("--packed-steps", type=int, default=150)
    parser.add_argument("--packed-train-size", type=int, default=10_000)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    default = Precision.resolve("auto", device)
    print(f"{name}, torch {torch.__version__}, default precision {default.name}; {args.train_size:,} train / "
          f"{args.test_size:,} test images, batch {args.batch}, {args.glimpses} glimpses", flush=True)
    started = time.perf_counter()
    dataset = make_synthetic(DataConfig(name="synthetic", synthetic_train_size=args.train_size,
                                        synthetic_test_size=args.test_size)).to(device)
    other = torch.contiguous_format if memory_format(device) == torch.channels_last else torch.channels_last
    other_name = "NCHW" if other == torch.contiguous_format else "channels_last"
    arms = [  # name, precision, torch.compile mode, layout other than rsam-dist's
        ("fp32", Precision("fp32", device.type), None, None),
        ("bf16", Precision("bf16", device.type), None, None),
        (f"{default.name} {other_name}", default, None, other),
    ]
    if not args.no_compile:
        arms += [(f"{default.name} compiled", default, "default", None),
                 (f"{default.name} graphed (reduce-overhead)", default, "reduce-overhead", None)]
    results = [time_arm(name, args, dataset, device, precision, mode, layout) for name, precision, mode, layout in arms]
    eager = next(r for r in results if r["arm"] == default.name)
    for result in results:
        if result["arm"] != eager["arm"] and result["arm"].startswith(default.name):
            agrees = abs(result["first_loss"] - eager["first_loss"]) <= 0.05 * abs(eager["first_loss"])
            print(f"{result['arm']}: first loss {'agrees with' if agrees else 'DIFFERS from'} eager "
                  f"({result['first_loss']:.4f} vs {eager['first_loss']:.4f})", flush=True)
    eval_batches(args, dataset, device)
    del dataset
    packs = packed(args, default.name) if args.packed else []
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return {"arms": results, "packed": packs}


if __name__ == "__main__":
    main()
