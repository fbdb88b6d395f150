"""Sweeps: the sweep file (`config`), its trials on Ray Tune (`tune`), and the files of the sweep
directory, written and read back typed (`results`).

    from rsam_dist.sweep import load_sweep, load_sweep_results, run_sweep, summary_text
    directory = run_sweep(load_sweep("sweeps/demo.yaml"))    # what `rsam-dist sweep sweeps/demo.yaml` does
    print(summary_text(load_sweep_results(directory)))
"""

from rsam_dist.sweep.config import Distribution, ResolvedSweep, SweepConfig, describe_sweep, load_sweep
from rsam_dist.sweep.results import (
    EpochRecord,
    SweepResults,
    TrialResult,
    hold_sweep_lock,
    load_sweep_results,
    summary_text,
)
from rsam_dist.sweep.tune import load_sweep_for_cli, run_sweep

__all__ = [
    "Distribution",
    "EpochRecord",
    "ResolvedSweep",
    "SweepConfig",
    "SweepResults",
    "TrialResult",
    "describe_sweep",
    "hold_sweep_lock",
    "load_sweep",
    "load_sweep_for_cli",
    "load_sweep_results",
    "run_sweep",
    "summary_text",
]
