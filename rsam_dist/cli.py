"""The `rsam-dist` command line. Each command loads its input and calls one library function.

    rsam-dist validate configs/digits.yaml              # resolved config + parameter count
    rsam-dist train configs/digits.yaml --local         # in this process
    rsam-dist train configs/digits.yaml --set scaling.num_workers=2   # DDP on Ray Train
    rsam-dist train --resume runs/<name>                # finish a stopped run
    rsam-dist plan sweeps/glimpses.yaml --cluster cluster/aws-gpu.yaml   # trials, time, cost; no Ray

Exit codes: 0 success, 2 bad input (one line on stderr), 1 a failure during the run.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from typing import NoReturn

import click

from rsam_dist.errors import UserError
from rsam_dist.process_exit import exit_code_of, exit_now
from rsam_dist.signals import sigterm_as_interrupt

SET_HELP = "Override a config value, e.g. --set model.glimpses=6 (repeatable)."
SMOKE_HELP = ("A quick end-to-end check: the debug-size model, a few hundred images, 1 epoch "
              "(your --set still wins).")


# Failures of the machine's files that the user fixes (space, permissions, a read-only disk, a
# name too long), as opposed to bugs: one line naming the path and what to do, exit 2.
USER_FIXABLE_ERRNOS = {
    errno.ENOSPC: "free some space there, or point train.storage / data.root elsewhere",
    errno.EDQUOT: "free some space there, or point train.storage / data.root elsewhere",
    errno.EROFS: "that file system is read-only: point train.storage elsewhere",
    errno.EACCES: "you may not write there: fix its permissions or point train.storage elsewhere",
    errno.EPERM: "you may not write there: fix its permissions or point train.storage elsewhere",
    errno.ENAMETOOLONG: "the path is too long: use a shorter train.name or storage path",
}


def describe_os_error(err: OSError) -> str:
    where = err.filename if err.filename is not None else "a file"
    reason = err.strerror or type(err).__name__
    return f"{str(where)[:200]}: {reason}: {USER_FIXABLE_ERRNOS[err.errno]}"


class RsamGroup(click.Group):
    """Turns UserError into one line + exit 2, and any other failure into one line + exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_as_interrupt():  # `kill` stops a command as Ctrl-C does
                return super().invoke(ctx)
        except UserError as err:
            click.echo(f"rsam-dist: error: {err}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("rsam-dist: interrupted; finished epochs and trials are kept (use --resume)", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as err:
            if err.errno not in USER_FIXABLE_ERRNOS:
                raise
            click.echo(f"rsam-dist: error: {describe_os_error(err)}", err=True)
            sys.exit(2)
        except Exception as err:  # noqa: BLE001 - the boundary where failures become exit codes
            if os.environ.get("RSAM_DEBUG"):
                traceback.print_exc()
            message = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            click.echo(f"rsam-dist: run failed: {type(err).__name__}: {message} (RSAM_DEBUG=1 shows the trace)",
                       err=True)
            sys.exit(1)


@click.group(cls=RsamGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rsam-dist")
def main() -> None:
    """rsam-dist: train the Recurrent Soft Attention Model with Ray Train, sweep it with Ray Tune."""


@main.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--local", is_flag=True, help="Train in this process, without Ray.")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to use (default: start a local one).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in this directory to its planned epochs.")
@click.option("--smoke-test", is_flag=True, help=SMOKE_HELP)
def train(config_file, overrides, local, address, resume_dir, smoke_test) -> None:
    """Train RSAM from CONFIG_FILE (YAML), by default as a Ray Train job."""
    from rsam_dist import timeline
    from rsam_dist.config import SMOKE_TEST
    from rsam_dist.run_start import plan_new_run, plan_resume

    if smoke_test:
        if resume_dir:
            raise UserError("--smoke-test starts a new run: drop --resume")
        overrides = (*SMOKE_TEST, *overrides)
    if resume_dir:
        run, config = plan_resume(resume_dir, overrides, config_file)
    else:
        run, config = plan_new_run(config_file, overrides)
    timeline.mark("config_ready")
    if local:
        from rsam_dist.local import train_local

        metrics = train_local(run, config, resume=bool(resume_dir))
    else:
        from rsam_dist.ray_train import train_on_ray

        metrics = train_on_ray(run, config, address=address, resume=bool(resume_dir))
    top1 = metrics.get("test_top1")
    summary = f"final test top-1 {100 * top1:.2f}%" if top1 is not None else "no epoch finished"
    viewer = f"tensorboard --logdir {run.local}" if run.local else f"rsam-dist tensorboard {run}"
    click.echo(f"{summary}\nrun directory: {run}\n{viewer}")


@main.command()
@click.argument("sweep_file", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a sweep field (num_samples=4) or a base config value (train.epochs=1).")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to use (default: start a local one).")
@click.option("--resume", is_flag=True, help="Continue the sweep: finished trials are kept, the rest run.")
@click.option("--smoke-test", is_flag=True, help=SMOKE_HELP)
@click.option("--dry-run", is_flag=True, help="Print the plan (rsam-dist plan) and run nothing.")
def sweep(sweep_file, overrides, address, resume, smoke_test, dry_run) -> None:
    """Run the trials of SWEEP_FILE (YAML) on Ray Tune; --resume continues an interrupted one."""
    from rsam_dist.config import SMOKE_TEST

    if smoke_test:
        if resume:
            raise UserError("--smoke-test starts a new sweep: drop --resume")
        overrides = (*SMOKE_TEST, "num_samples=1", *overrides)
    if dry_run:
        from rsam_dist.plan import make_plan

        if resume:
            raise UserError("--dry-run plans a new sweep: drop --resume")
        click.echo(make_plan(sweep_file, overrides, address=address).text())
        return
    from rsam_dist.sweep import load_sweep_for_cli, load_sweep_results, run_sweep, summary_text

    loaded = load_sweep_for_cli(sweep_file, overrides, resume)
    if not resume:
        from rsam_dist.plan.record import plan_before_sweep

        summary, keep_plan = plan_before_sweep(loaded, sweep_file, overrides, address)
        click.echo(summary, err=True)
    else:
        keep_plan = None
    directory = run_sweep(loaded, address=address, resume=resume, on_start=keep_plan)
    click.echo(summary_text(load_sweep_results(directory)))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def validate(file, overrides) -> None:
    """Check a training config (or a sweep or cluster file) and print it resolved."""
    from rsam_dist.validation import validate_file

    click.echo(validate_file(file, overrides))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a sweep field (num_samples=4) or a config value (train.epochs=1).")
@click.option("--cluster", type=click.Path(dir_okay=False),
              help="Plan on this cluster-launcher file (cluster/*.yaml), at its largest.")
@click.option("--address", metavar="URL", help="Plan on the running cluster whose dashboard is at URL.")
def plan(file, overrides, cluster, address) -> None:
    """Every trial FILE (a sweep or training config) would run, how long and what it costs; no Ray."""
    from rsam_dist.plan import make_plan

    click.echo(make_plan(file, overrides, cluster=cluster, address=address).text())


@main.command()
@click.argument("sweep_dir", type=click.Path(file_okay=False))
def report(sweep_dir) -> None:
    """Write the paper's figures (PNG), report.md and report.html into SWEEP_DIR; print their paths."""
    from rsam_dist.report import write_report
    from rsam_dist.sweep import hold_sweep_lock

    with hold_sweep_lock(sweep_dir):  # not while a sweep (or another report) writes there
        paths = write_report(sweep_dir)
    for path in paths:
        click.echo(path)


def _register_subcommands() -> None:
    from rsam_dist.cli_jobs import logs, status, stop, submit, tensorboard

    for command in (submit, status, logs, stop, tensorboard):
        main.add_command(command)


_register_subcommands()


def run() -> NoReturn:
    """The `rsam-dist` console script: `main`, then an exit that skips the interpreter's teardown
    of torch and Ray (rsam_dist.process_exit; it leaves `main` itself, which tests invoke in-process,
    as Click made it)."""
    exit_now(exit_code_of(main))


if __name__ == "__main__":
    run()
