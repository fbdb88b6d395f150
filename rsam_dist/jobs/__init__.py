"""Cluster jobs: run train or sweep on a running Ray cluster and bring its results back.

    cluster_file.py   checks cluster/*.yaml (Ray's schema + our security and install rules)
    dashboard.py      reaches a cluster's dashboard: --address, `ray dashboard` port-forward, job client
    jobs.py           the job registry, submit, status, logs, stop
    tensorboard.py    gathers a run's, sweep's or job's event files for TensorBoard

The commands are in rsam_dist/cli_jobs.py. Nothing is imported here: each command loads only the
module it needs.
"""
