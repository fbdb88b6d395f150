"""Images per second of the real training step on CPUs, per thread count: to size CPU nodes.

It times `engine.train_one_epoch` (forward, loss, backward, SGD step) one batch at a time and
`engine.evaluate` on CIFAR-shaped images, with the model of configs/cifar10.yaml (4 glimpses,
feedback, down-sample network, batch 128), and prints images/s for each thread count plus the time
of one 20-epoch CIFAR-10 run (50,000 training and 10,000 test images an epoch) at that speed. No
Ray, no data download:

    python benchmarks/bench_cpu.py --threads 1 2            # this machine
    python benchmarks/bench_cpu.py --threads 1 8            # on a cluster/aws-g2.yaml node
    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX MKL_ENABLE_INSTRUCTIONS=AVX \\
        python benchmarks/bench_cpu.py --threads 1 2        # a g2 node's AVX-only Xeon, emulated

Two figures per thread count, medians over groups of steps after a warm-up:
- wall: images / wall-clock second, what you get on a machine nobody else is using;
- path: images / CPU-second of the busiest thread (its "critical path"). Idle threads sleep
  (OMP_WAIT_POLICY=PASSIVE), so this is what the step costs on cores of its own even when the
  machine is shared and wall-clock time is stretched by other processes. With one thread the two
  agree on an idle machine; with more, `path` ignores load imbalance between threads, so it is a
  slight overestimate there.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: waiting threads sleep

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from rsam_dist.config import Config, DataConfig  # noqa: E402
from rsam_dist.data import make_synthetic  # noqa: E402
from rsam_dist.distributed import World  # noqa: E402
from rsam_dist.engine import EVAL_BATCH, evaluate, train_one_epoch  # noqa: E402
from rsam_dist.training import build_state  # noqa: E402

CIFAR_TRAIN, CIFAR_TEST, PAPER_EPOCHS = 50_000, 10_000, 20
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, from /proc."""
    times = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        times[task.name] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return times


def per_image_seconds(function, images: int, groups: int, per_group: int) -> tuple[float, float]:
    """(wall, critical-path) seconds per image: medians over `groups` groups of `per_group` calls."""
    function()  # warm-up: allocations, oneDNN primitive creation
    walls, paths = [], []
    for _ in range(groups):
        before, started = thread_cpu_seconds(), time.perf_counter()
        for _ in range(per_group):
            function()
        wall, after = time.perf_counter() - started, thread_cpu_seconds()
        walls.append(wall / (per_group * images))
        paths.append(max(after[t] - before.get(t, 0.0) for t in after) / (per_group * images))
    return statistics.median(walls), statistics.median(paths)


def bench(config: Config, threads: int, groups: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    world = World()
    state = build_state(config, torch.device("cpu"), world)
    batch = config.optim.batch_size
    data = make_synthetic(DataConfig(name="synthetic", synthetic_train_size=batch * 8,
                                     synthetic_test_size=EVAL_BATCH))
    order = torch.randperm(len(data.train))
    batches = [order[i * batch:(i + 1) * batch] for i in range(8)]
    step = iter(range(10**9))

    def train_step() -> None:
        indices = [batches[next(step) % len(batches)]]
        train_one_epoch(state.model, state.optimizer, data.train, indices, config.model, world)

    def eval_pass() -> None:
        evaluate(state.model, data.test, config.model, world)

    train_wall, train_path = per_image_seconds(train_step, batch, groups, per_group=4)
    test_wall, test_path = per_image_seconds(eval_pass, EVAL_BATCH, max(3, groups // 3), per_group=1)
    return {
        "train_wall": 1 / train_wall, "train_path": 1 / train_path,
        "test_wall": 1 / test_wall, "test_path": 1 / test_path,
        "hours_wall": PAPER_EPOCHS * (CIFAR_TRAIN * train_wall + CIFAR_TEST * test_wall) / 3600,
        "hours_path": PAPER_EPOCHS * (CIFAR_TRAIN * train_path + CIFAR_TEST * test_path) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--groups", type=int, default=12, help="timed groups of 4 training steps per thread count")
    parser.add_argument("--glimpses", type=int, default=4)
    args = parser.parse_args()
    config = Config.model_validate({"model": {"glimpses": args.glimpses, "feedback": True,
                                              "attention_input": "downsample"}})
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, {args.glimpses} glimpses, batch {config.optim.batch_size}")
    print("threads  train images/s (wall | path)  test images/s (wall | path)  20 CIFAR-10 epochs (wall | path)")
    for threads in args.threads:
        r = bench(config, threads, args.groups)
        print(f"{threads:>7}  {r['train_wall']:10.0f} | {r['train_path']:<10.0f}  {r['test_wall']:10.0f} | "
              f"{r['test_path']:<10.0f}  {r['hours_wall']:8.2f} h | {r['hours_path']:.2f} h", flush=True)


if __name__ == "__main__":
    main()
