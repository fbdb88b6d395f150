"""The fixed costs of a sweep on this machine, from a finished sweep, as a `local_overheads` block
for rsam_dist/plan/throughput.yaml.

`rsam-dist plan` times the model step itself; what it cannot time without running Ray is what a
sweep spends around the steps. This reads them off a sweep that `rsam-dist sweep` ran here:
- per epoch beyond the steps and test pass: Tune's time between two reports (time_this_iter_s)
  minus the epoch's own epoch_seconds, from the second epoch on (median);
- a trial's start-up: its first report's time minus its first epoch and that per-epoch extra (median);
- the sweep's own start and end (Ray, results): the sweep's wall time, from its plan (plan.yaml's
  planned_at_unix) to results.csv, minus the trials laid out over the slots that ran them;
- the reference step plan.yaml recorded just before the sweep, so later plans can scale all three
  by how fast the machine runs now.

    rsam-dist sweep SWEEP.yaml                 # a few trials of a few epochs, on this machine
    python benchmarks/calibrate_overheads.py runs/NAME --machine "2-core shared VM"
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

from rsam_dist.plan.estimate import REFERENCE_SETTING, makespan
from rsam_dist.plan.record import read_plan_record
from rsam_dist.sweep.results import RESULTS_FILE


def trial_reports(sweep_dir: Path) -> list[list[dict]]:
    """Each trial's Tune reports (result.json lines), in order."""
    trials = []
    for result in sorted(sweep_dir.glob("tune*/*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials.append(rows)
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--machine", required=True, help="What the machine is, e.g. '2-core shared VM, load ~10'.")
    args = parser.parse_args()
    plan = read_plan_record(args.sweep_dir)
    if not plan or plan.get("reference_step_s") is None or plan.get("planned_at_unix") is None:
        raise SystemExit(f"{args.sweep_dir}: no plan.yaml with a reference step: run the sweep with this rsam-dist")
    trials = trial_reports(args.sweep_dir)
    if not trials:
        raise SystemExit(f"{args.sweep_dir}: no Tune result.json files")
    extras = [row["time_this_iter_s"] - row["epoch_seconds"] for rows in trials for row in rows[1:]]
    epoch_extra = max(0.0, statistics.median(extras)) if extras else 0.0
    starts = [rows[0]["time_this_iter_s"] - rows[0]["epoch_seconds"] - epoch_extra for rows in trials]
    wall = (args.sweep_dir / RESULTS_FILE).stat().st_mtime - plan["planned_at_unix"]
    slots = plan.get("at_once") or 1
    sweep_start = max(0.0, wall - makespan([rows[-1]["time_total_s"] for rows in trials], slots))
    block = {"local_overheads": {
        "sweep_start_s": round(sweep_start, 1),
        "trial_start_s": round(statistics.median(starts), 1),
        "epoch_extra_s": round(epoch_extra, 2),
        "reference": {**{key: getattr(REFERENCE_SETTING, key) for key in
                         ("glimpses", "hidden_size", "feedback", "attention_input", "batch", "threads")},
                      "train_step_s": round(plan["reference_step_s"], 4)},
        "machine": args.machine,
        "source": f"benchmarks/calibrate_overheads.py on {args.sweep_dir.name}: {len(trials)} trials, {slots} at "
                  f"once, {wall:.0f} s wall; trial start-ups {', '.join(f'{s:.0f}' for s in starts)} s",
        "as_of": time.strftime("%Y-%m-%d", time.localtime(plan["planned_at_unix"])),
    }}
    print(yaml.safe_dump(block, sort_keys=False).rstrip())


if __name__ == "__main__":
    main()
