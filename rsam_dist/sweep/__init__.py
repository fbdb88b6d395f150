"""Sweeps: the sweep file (`config`), its trials on Ray Tune (`tune`), and the sweep directory's
result files (`results`).

    from rsam_dist.sweep import load_sweep, run_sweep
    run_sweep(load_sweep("sweeps/demo.yaml"))      # what `rsam-dist sweep sweeps/demo.yaml` does
"""

from rsam_dist.sweep.config import Distribution, ResolvedSweep, SweepConfig, describe_sweep, load_sweep
from rsam_dist.sweep.tune import load_sweep_for_cli, run_sweep, summarize

__all__ = [
    "Distribution",
    "ResolvedSweep",
    "SweepConfig",
    "describe_sweep",
    "load_sweep",
    "load_sweep_for_cli",
    "run_sweep",
    "summarize",
]
