"""Connecting the driver to Ray: a given cluster, or a local one started for this run."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rsam_dist.errors import UserError

# Sweep trial drivers ask for one unit of this custom resource instead of a CPU, so that Tune's
# trials never hold the CPUs their own Train workers need (Ray Tune does not reserve a trial's Train workers).
TRIAL_DRIVER_RESOURCE = "train_driver"
LOCAL_TRIAL_DRIVER_SLOTS = 64


def set_ray_environment() -> None:
    """Every RAY_* setting rsam-dist relies on, in one place. Call it before importing ray, which
    reads them at import time; a value the user set in the environment wins."""
    # Ray 2.59+ clusters started with `ray start` use token auth; a client must opt in.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # We are on the Train V2 API already: its migration notices are noise.
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Train V2 tees print() of workers into its logger, so every epoch line would show twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Tune's own console output: the legacy reporter stays silent at verbose=0, where the new one
    # still prints a banner and a TensorBoard hint into Ray's session directory, not the sweep's.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _refuse_second_local_instance() -> None:
    """Two Ray instances on one machine break Ray Train: its placement-group cleaner looks the
    cluster up by scanning local processes, finds two, and never frees a stopped trial's workers."""
    from ray._private.services import find_gcs_addresses

    running = sorted(find_gcs_addresses())
    if running:
        raise UserError(
            f"a Ray cluster already runs on this machine ({', '.join(running)}): pass --address "
            f"{running[0]} to use it, or stop it with `ray stop`"
        )


@contextmanager
def connect(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """`ray.init` for the duration of a command, unless Ray is already up in this process.

    With no address, a local Ray is started with its dashboard on 127.0.0.1: the dashboard
    serves the State API that Train V2's placement-group cleaner needs (without it, trials that
    Tune stops early leak their workers and a sweep deadlocks).
    """
    set_ray_environment()  # before importing ray, which reads these at import time
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"logging_level": logging.ERROR, "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            _refuse_second_local_instance()
            # Its notices about actor arguments are noise here; spot clusters keep it (not local).
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            ray.init(
                address="local",  # a new instance, never one that `ray start` left on this machine
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                resources={TRIAL_DRIVER_RESOURCE: LOCAL_TRIAL_DRIVER_SLOTS},
                **common,
            )
    except (ConnectionError, TimeoutError) as err:
        raise UserError(
            f"cannot reach the Ray cluster at {address}: start it (`ray up CLUSTER.yaml` or "
            f"`ray start --head`) or fix --address/RAY_ADDRESS ({type(err).__name__})"
        ) from None
    except Exception as err:  # noqa: BLE001 - Ray raises several types for an unreachable GCS
        if address and ("connect" in str(err).lower() or "auth" in str(err).lower()):
            raise UserError(
                f"cannot reach the Ray cluster at {address}: {str(err).splitlines()[0][:160]}"
            ) from None
        raise
    try:
        yield
    finally:
        ray.shutdown()
