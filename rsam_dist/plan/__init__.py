"""`rsam-dist plan FILE`: what a sweep or training run would cost, before anything is spent.

    rsam-dist plan sweeps/demo.yaml                                   # on this machine (times the step here)
    rsam-dist plan sweeps/glimpses.yaml --cluster cluster/aws-gpu.yaml   # on a cluster file, at its largest
    rsam-dist plan sweeps/demo.yaml --address http://127.0.0.1:8265      # on a running cluster
    rsam-dist sweep sweeps/demo.yaml --dry-run                        # the same as plan

It lists every trial (settings, seed, epochs, resources, how many share a GPU), how many run at
once, the estimated time per trial and in all, GPU-hours, node-hours and cost, and runs the
pre-flight checks (each failure is one line, exit 2). No Ray is started.

`trials` enumerates, `targets` reads where they run, `measure` times the step, `estimate` turns
figures into time, `costs` into money, `preflight` checks, `render` words it, `record` keeps the
estimate beside a sweep's results. The tables: instances.yaml (instance types and prices),
throughput.yaml (measured GPU throughput and local overheads).
"""

from rsam_dist.plan.planner import Plan, make_plan

__all__ = ["Plan", "make_plan"]
