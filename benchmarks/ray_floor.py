"""What Ray Train itself costs before a training function runs: the floor under rsam-dist's start-up.

Starts a local Ray the way `rsam-dist train` does (rsam_dist.ray_cluster.connect: dashboard on,
the same RAY_* settings), then fits a `TorchTrainer` whose training function does nothing but
note the time, `--fits` times in a row on that one Ray (the first on a fresh Ray, the rest on a
warm one), with one worker holding the CPUs rsam-dist's default (`auto`) gives it: all of them. Prints
one JSON line:

    {"python_start": s, "ray_ready": s, "fits": [{"to_function": s, "total": s}, ...]}

`python_start` and `ray_ready` count from the moment this process was started (like Enter);
`to_function` from the call of `fit()` to the first line of the training function. No torch
model, no data, no rsam-dist code in the workers: whatever rsam-dist adds is on top of this.

    python benchmarks/ray_floor.py --fits 3      # make bench runs it beside the rsam-dist arms
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports below: they are part of what is measured

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def process_start_time() -> float:
    """When the kernel started this process (Unix seconds): the interpreter's own start-up
    counts, as it does for `rsam-dist train`. Without /proc, when this module began."""
    try:
        stat = Path("/proc/self/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return STARTED
    started_after_boot = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    return int(boot.split()[1]) + started_after_boot


def note_entry(loop_config: dict) -> None:
    """The training function: one timestamp, nothing else."""
    Path(loop_config["entered_file"]).write_text(repr(time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=3)
    args = parser.parse_args()
    began = process_start_time()

    from rsam_dist.ray_cluster import connect  # sets the RAY_* environment before ray is imported
    from rsam_dist.resources import local_node_resources
    from rsam_dist.worker_cpus import cpus_per_worker

    # The CPUs `scaling.cpus_per_worker: auto` gives one worker here, by Ray's count (cgroup limits
    # included): asking for more than Ray has would wait for ever.
    cpus = cpus_per_worker(1, [local_node_resources() or {"CPU": float(os.cpu_count() or 1)}])

    with connect(), tempfile.TemporaryDirectory(prefix="ray-floor-") as scratch:
        ray_ready = time.time()
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        fits = []
        for index in range(args.fits):
            entered_file = Path(scratch) / f"entered-{index}"
            called = time.time()
            TorchTrainer(
                note_entry,
                train_loop_config={"entered_file": str(entered_file)},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
                run_config=RunConfig(storage_path=scratch, name=f"floor-{index}"),
            ).fit()
            returned = time.time()
            fits.append({"to_function": float(entered_file.read_text()) - called, "total": returned - called})
    print(json.dumps({"python_start": STARTED - began, "ray_ready": ray_ready - began, "fits": fits}), flush=True)


if __name__ == "__main__":
    main()
