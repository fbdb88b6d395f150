"""What Ray Train itself costs before a training function runs: the floor under rsam-dist's start-up.

Starts a local Ray the way `rsam-dist train` does (rsam_dist.ray_cluster.connect: dashboard on,
the same RAY_* settings), then fits a `TorchTrainer` whose training function does nothing but
note the time, `--fits` times in a row on that one Ray (the first on a fresh Ray, the rest on a
warm one), with one worker holding the CPUs rsam-dist's default (`auto`) gives it: all of them. Prints
one JSON line:

    {"python_start": s, "ray_ready": s,
     "fits": [{"to_function": s, "total": s, "cpu_busy": fraction, "cpu_seconds": s,
               "by_process": {name: CPU-seconds, ...}}, ...]}

`python_start` and `ray_ready` count from the moment this process was started (like Enter);
`to_function` from the call of `fit()` to the first line of the training function. No torch
model, no data, no rsam-dist code in the workers: whatever rsam-dist adds is on top of this.
`cpu_busy` is how busy the machine's CPUs were over `to_function` (0 to 1, from /proc/stat; None
without it) and `cpu_seconds` the CPU time they spent: near 1, the wait is Ray Train's own work
(its actors' processes starting and importing), which more cores would shorten; well below 1,
it is latency that they would not. `by_process` splits that CPU time by process (Ray's names,
e.g. `ray::TrainController`, so Train's actors can be told apart; Linux only, else empty).

    python benchmarks/ray_floor.py --fits 3      # make bench runs it beside the rsam-dist arms
"""

from __future__ import annotations

import time
from collections.abc import Sequence

STARTED = time.time()  # before the imports below: they are part of what is measured

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
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


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, all) clock ticks of the machine's CPUs since boot, from /proc/stat; None without it.
    Busy is user, nice, system and interrupts; the rest is idle, I/O wait and time the hypervisor
    took (steal)."""
    try:
        user, nice, system, idle, iowait, irq, softirq, steal = (
            int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    except (OSError, ValueError):
        return None
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal


def cpu_between(before: Sequence[int] | None, after: Sequence[int] | None) -> tuple[float | None, float | None]:
    """(busy fraction, busy CPU-seconds) between two `cpu_ticks`; (None, None) without them."""
    if not before or not after or after[1] <= before[1]:
        return None, None
    busy = after[0] - before[0]
    return busy / (after[1] - before[1]), busy / os.sysconf("SC_CLK_TCK")


def note_entry(loop_config: dict) -> None:
    """The training function: the time and the CPU counters, nothing else (the worker is on this
    machine: the Ray is local)."""
    Path(loop_config["entered_file"]).write_text(json.dumps({"time": time.time(), "cpu": cpu_ticks()}))


def process_name(command: str) -> str:
    """A short name for a process: a Ray actor's without the method it is running
    (`ray::TrainController.run`), else the program and, for Python, its script (`python dashboard.py`)."""
    if command.startswith("ray::"):
        return command.split(".", 1)[0]
    words = command.split()
    program = os.path.basename(words[0]) if words else command
    script = next((word for word in words[1:] if not word.startswith("-")), None)
    return f"{program} {os.path.basename(script)}" if program.startswith("python") and script else program


def cpu_by_process_until_entry(entered_file: Path) -> tuple[dict, threading.Thread]:
    """CPU seconds of each of this user's processes now, and, once `entered_file` appears (the
    training function has run), again: filled into the returned dict by the returned thread, under
    "before" and "entered". Train's actors live until fit() returns, so the second snapshot sees
    each of them."""
    from cpu_by_process import cpu_seconds  # the sibling script's /proc reader

    snapshots = {"before": cpu_seconds()}

    def watch() -> None:
        while not entered_file.exists():
            time.sleep(0.05)
        snapshots["entered"] = cpu_seconds()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return snapshots, thread


def actor_names() -> dict[int, str]:
    """pid -> `ray::Class` of every actor this Ray has run, from Ray's state API. /proc's command
    line of an actor's process can read empty while Ray retitles it for a task, leaving the kernel's
    15-character name (`ray::Synchroniz`); Ray's own record has the class."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        return {actor.pid: f"ray::{actor.class_name}" for actor in list_actors(limit=10_000) if actor.pid}
    except RayStateApiException:  # the dashboard, which serves it, did not answer: /proc's names stay
        return {}


def by_process(snapshots: dict, actors: dict[int, str], top: int = 12) -> dict[str, float]:
    """CPU seconds between the two snapshots, summed by process name (an actor's class from
    `actors`), the `top` largest."""
    used: dict[str, float] = {}
    for pid, (name, seconds) in snapshots.get("entered", {}).items():
        spent = seconds - snapshots["before"].get(pid, (name, 0.0))[1]
        if spent > 0:
            name = actors.get(pid) or process_name(name)
            used[name] = used.get(name, 0.0) + spent
    return {name: round(seconds, 2) for name, seconds in sorted(used.items(), key=lambda item: -item[1])[:top]}


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
            snapshots, watcher = cpu_by_process_until_entry(entered_file)
            cpu_at_call, called = cpu_ticks(), time.time()
            TorchTrainer(
                note_entry,
                train_loop_config={"entered_file": str(entered_file)},
                scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": cpus}),
                run_config=RunConfig(storage_path=scratch, name=f"floor-{index}"),
            ).fit()
            returned = time.time()
            watcher.join(timeout=10)  # the function has run: its snapshot is a /proc scan away
            entered = json.loads(entered_file.read_text())
            busy, cpu_seconds = cpu_between(cpu_at_call, entered["cpu"])
            fits.append({"to_function": entered["time"] - called, "total": returned - called,
                         "cpu_busy": busy, "cpu_seconds": cpu_seconds,
                         "by_process": by_process(snapshots, actor_names())})
    print(json.dumps({"python_start": STARTED - began, "ray_ready": ray_ready - began, "fits": fits}), flush=True)


if __name__ == "__main__":
    main()
