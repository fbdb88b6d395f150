"""Where a machine's CPU goes while a run trains: CPU seconds of each of your processes over a window.

Ray's own processes (raylet, GCS, dashboard, Train's controller and its helper actors) take CPU
from a Ray Train worker that trains on every core of a small machine. Start a run, wait until it
trains, then sample:

    rsam-dist train configs/digits.yaml --set train.epochs=30 &
    sleep 60 && python benchmarks/cpu_by_process.py --seconds 30

It prints each process that used CPU in the window (user + system time from /proc, by the name
Ray gives its workers, e.g. `ray::RayTrainWorker`), the share of all cores it took, and the total
of everything but the busiest process. Linux only; nothing is imported but the standard library.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds so far) of every process of this user; empty without /proc."""
    if not Path("/proc/self/stat").exists():
        return {}
    me = os.getuid()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != me:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            # Empty for kernel threads, and for a Ray worker while Ray retitles it (each new task
            # does): then the kernel's name of it, cut to 15 characters (`ray::Synchroniz`).
            command = command or (entry / "comm").read_text().strip()
        except OSError:  # it ended meanwhile
            continue
        name = command.split(" ")[0] if command.startswith("ray::") else command
        found[int(entry.name)] = (name or f"[{entry.name}]", (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    before = cpu_seconds()
    time.sleep(args.seconds)
    after = cpu_seconds()
    used = sorted(((seconds - before[pid][1], name, pid) for pid, (name, seconds) in after.items()
                   if pid in before and seconds > before[pid][1]), reverse=True)
    capacity = args.seconds * (os.cpu_count() or 1)
    print(f"CPU seconds in {args.seconds:.0f} s on {os.cpu_count()} cores ({capacity:.0f} CPU-seconds in all):")
    for seconds, name, pid in used[: args.top]:
        print(f"{seconds:8.2f}  {100 * seconds / capacity:5.1f}%  {pid:>7}  {name[:100]}")
    rest = sum(seconds for seconds, _, _ in used[1:])
    print(f"all but the busiest: {rest:.2f} CPU-seconds, {100 * rest / capacity:.1f}% of the machine")


if __name__ == "__main__":
    main()
