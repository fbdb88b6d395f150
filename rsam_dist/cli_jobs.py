"""Commands for cluster jobs: submit, status, logs, stop, tensorboard (cli.py registers them).

    ray up cluster/aws-gpu.yaml
    rsam-dist submit train configs/cifar10.yaml --cluster cluster/aws-gpu.yaml --set train.epochs=5
    rsam-dist status JOB_ID                  # or no id: the jobs submitted from this machine
    rsam-dist logs JOB_ID --follow
    rsam-dist stop JOB_ID
    rsam-dist tensorboard --job JOB_ID       # or a run/sweep directory, or an s3:// URI

`--cluster FILE` reaches the dashboard through `ray dashboard FILE` (an SSH port-forward);
`--address URL` is a dashboard URL such as http://127.0.0.1:8265. After submit, a job's id is
enough: where it runs is recorded in ~/.rsam-dist/jobs.json ($RSAM_DIST_HOME).
"""

from __future__ import annotations

import click

from rsam_dist.errors import UserError

CLUSTER_HELP = "Ray cluster-launcher file of a running cluster (reached through `ray dashboard`)."
ADDRESS_HELP = "Ray dashboard URL, e.g. http://127.0.0.1:8265."


def cluster_options(function):
    function = click.option("--address", metavar="URL", help=ADDRESS_HELP)(function)
    function = click.option("--cluster", type=click.Path(dir_okay=False), help=CLUSTER_HELP)(function)
    return function


@click.command()
@click.argument("kind", type=click.Choice(["train", "sweep"]))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value of FILE, e.g. --set train.epochs=5 (repeatable); for a sweep also a "
                   "sweep field (num_samples=4).")
@cluster_options
def submit(kind, file, overrides, cluster, address) -> None:
    """Run `rsam-dist KIND FILE` as a Ray job on a running cluster and print its id.

    The project is the job's working directory; outputs go to ~/rsam-dist-runs/JOB_ID/ on the
    head (or to an absolute / s3:// train.storage).
    """
    from rsam_dist.jobs.jobs import submit_job

    job_id = submit_job(kind, file, overrides, address=address, cluster=cluster,
                        notify=lambda note: click.echo(note, err=True))
    click.echo(job_id)
    click.echo(f"follow it: rsam-dist logs {job_id} --follow   stop it: rsam-dist stop {job_id}", err=True)


@click.command()
@click.argument("job_id", required=False)
@cluster_options
def status(job_id, cluster, address) -> None:
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED); no id: list jobs."""
    from rsam_dist.jobs.jobs import describe_status, list_jobs

    click.echo(describe_status(job_id, address, cluster) if job_id else list_jobs())


@click.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@cluster_options
def logs(job_id, follow, cluster, address) -> None:
    """Print a job's output (driver and workers)."""
    from rsam_dist.jobs.jobs import job_logs

    text = job_logs(job_id, follow=follow, address=address, cluster=cluster,
                    write=lambda chunk: click.echo(chunk, nl=False))
    if text is not None:
        click.echo(text, nl=False)


@click.command()
@click.argument("job_id")
@cluster_options
def stop(job_id, cluster, address) -> None:
    """Stop a running job and print its final status."""
    from rsam_dist.jobs.jobs import stop_job

    click.echo(f"{job_id}  {stop_job(job_id, address=address, cluster=cluster)}")


@click.command()
@click.argument("source", required=False, metavar="RUN_OR_SWEEP_DIR")
@click.option("--job", "job_id", help="A job from `rsam-dist submit`: collect what it wrote.")
@click.option("--cluster", type=click.Path(dir_okay=False),
              help="Read RUN_OR_SWEEP_DIR (or the job's directory) on this cluster's head with `ray "
                   "rsync-down` (quote a '~/...' path so it means the head's home).")
@click.option("--out", "target", type=click.Path(file_okay=False),
              help="Where to gather the event files (default ~/.rsam-dist/tensorboard/NAME).")
@click.option("--port", type=click.IntRange(1, 65535), default=6006, show_default=True,
              help="TensorBoard's port on 127.0.0.1.")
@click.option("--no-launch", is_flag=True, help="Only collect the files and print the command.")
def tensorboard(source, job_id, cluster, target, port, no_launch) -> None:
    """Gather a run's or sweep's event files into one directory and start TensorBoard on it."""
    from rsam_dist.jobs.tensorboard import collect_event_files, collect_for_job, default_target, launch_tensorboard

    if bool(source) == bool(job_id):
        raise UserError("give a RUN_OR_SWEEP_DIR (a directory or URI) or --job JOB_ID, not both")
    if job_id:
        collected = collect_for_job(job_id, target, cluster=cluster)
    else:
        collected = collect_event_files(source, target or default_target(source), cluster=cluster)
    click.echo(f"{len(collected.files)} event files in {collected.logdir}")
    if no_launch:
        click.echo(collected.command(port))
        return
    click.echo(f"TensorBoard at http://127.0.0.1:{port}/ (Ctrl-C stops it)")
    launch_tensorboard(collected.logdir, port)
