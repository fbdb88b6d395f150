"""Cluster jobs: run train or sweep on a running Ray cluster and bring its results back.

    cluster_file.py   checks cluster/*.yaml (Ray's schema + our security and install rules)
    start_commands.py what a cluster file's shell command runs: each `ray start` and its RAY_AUTH_MODE
    dashboard.py      reaches a cluster's dashboard: --address (loopback or https), `ray dashboard`
                      port-forward, job client
    jobs.py           the job registry, submit, status, logs, stop
    upload.py         what a job uploads: an allow-list of the project, never secrets
    tensorboard.py    gathers a run's, sweep's or job's event files for TensorBoard

The commands are in rsam_dist/cli_jobs.py. Nothing is imported here: each command loads only the
module it needs.
"""
