"""Does a lower precision cost accuracy? Digits, several seeds, fp32 against the other arms.

For each seed, `fit` trains the digits config in fp32 and in each precision asked for (default:
whatever `auto` picks on this machine; on a CPU without native bf16 that is fp32 itself, so ask
for bf16 explicitly to see what it would do). It prints every final test top-1, the mean per
precision, and the difference to fp32 in points; exit status 1 if a mean is more than
--tolerance points away from fp32's.

    python benchmarks/precision_check.py                              # auto vs fp32, 10 epochs, 3 seeds
    python benchmarks/precision_check.py --precisions bf16 --epochs 3   # emulated bf16 is slow on AVX2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from rsam_dist.config import load_config
from rsam_dist.precision import Precision
from rsam_dist.training import fit


def final_top1(precision: str, seed: int, epochs: int, config_file: str) -> float:
    config = load_config(config_file, [f"train.precision={precision}", f"train.seed={seed}",
                                       f"train.epochs={epochs}", "train.device=cpu", "train.mask_images=0"])
    return fit(config).last_metrics["test_top1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--precisions", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed |mean difference| in points")
    args = parser.parse_args(argv)

    auto = Precision.resolve("auto", torch.device("cpu")).name
    print(f"digits, {args.epochs} epochs, seeds {args.seeds}; auto is {auto} on this CPU "
          f"({torch.backends.cpu.get_cpu_capability()})", flush=True)
    results: dict[str, list[float]] = {"fp32": []}
    for name in args.precisions:
        results.setdefault(auto if name == "auto" else name, [])
    for seed in args.seeds:
        for name in results:
            started = time.perf_counter()
            top1 = final_top1(name, seed, args.epochs, args.config)
            results[name].append(top1)
            seconds = time.perf_counter() - started
            print(f"seed {seed}  {name:<5} final test top-1 {100 * top1:6.2f}%  ({seconds:.0f} s)", flush=True)
    reference = statistics.mean(results["fp32"])
    failed = False
    for name, values in results.items():
        difference = 100 * (statistics.mean(values) - reference)
        verdict = "" if name == "fp32" else (" ok" if abs(difference) <= args.tolerance else " TOO FAR")
        failed |= verdict == " TOO FAR"
        print(f"{name:<5} mean {100 * statistics.mean(values):6.2f}%  per seed "
              f"{' '.join(f'{100 * v:.2f}' for v in values)}  vs fp32 {difference:+.2f} points{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
