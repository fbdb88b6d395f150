"""Connecting the driver to Ray: a given cluster, or a local one started for this run.

Nothing here may hang: an --address is probed (TCP, then a gRPC handshake) with a timeout before
`ray.init`, which would otherwise retry an unreachable GCS for minutes without seeing Ctrl-C;
the resources a run asks for are checked against the cluster (rsam_dist.resources); SIGTERM
stops a command the way Ctrl-C does (rsam_dist.signals).

    with connect("10.0.0.5:6379", need=ResourceRequest.for_scaling(config.scaling)):
        ...  # ray.* calls
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rsam_dist import timeline
from rsam_dist.errors import UserError
from rsam_dist.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from rsam_dist.resources import ResourceRequest

# Sweep trial drivers ask for one unit of this custom resource instead of a CPU, so that Tune's
# trials never hold the CPUs their own Train workers need (Ray Tune does not reserve a trial's Train workers).
TRIAL_DRIVER_RESOURCE = "train_driver"
LOCAL_TRIAL_DRIVER_SLOTS = 64
CONNECT_TIMEOUT_S = 10.0
"""How long an --address may take to answer like a Ray cluster before the command gives up."""
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # length 0, type SETTINGS, no flags, stream 0
HTTP2_SETTINGS = 4


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
    # Train's controller looks at its workers every 2 s by default, so a finished run waited up to
    # 2 s more to end (each sweep trial too). A look is one small call per worker: 0.5 s costs nothing.
    # (A local Ray's controller inherits this from us; a cluster's nodes keep their own setting.)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Tune's default loggers include a TensorBoard one: each trial would show twice in a sweep's
    # TensorBoard (and twice in HParams) beside the trial's own run. Its CSV and JSON loggers are
    # passed explicitly instead (sweep.tune.build_tuner).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def _refuse_second_local_instance() -> None:
    """Two Ray instances on one machine break Ray Train: its placement-group cleaner looks the
    cluster up by scanning local processes, finds two, and never frees a stopped trial's workers.
    (A scan, so two commands started in the same second may both pass; run_start's locks keep
    two commands off one run or sweep.)"""
    from ray._private.services import find_gcs_addresses

    running = sorted(find_gcs_addresses())
    if not running:
        return
    owners = _ray_owners()
    me = getpass.getuser()
    if owners and owners != {me}:  # never suggest joining someone else's cluster
        raise UserError(
            f"a Ray instance of {', '.join(sorted(owners - {me}) or owners)} already runs on this machine and "
            "rsam-dist does not start a second one (two break Ray Train): wait for it to end, or train "
            "with --local"
        )
    raise UserError(
        f"a Ray instance of yours already runs on this machine ({running[0]}): stop it with `ray stop`, "
        f"or run on it with --address {running[0]}"
    )


def _ray_owners() -> set[str]:
    """The users whose Ray GCS processes run on this machine (empty if that cannot be told)."""
    import psutil

    owners = set()
    for process in psutil.process_iter(["name", "username"]):
        if process.info.get("name") == "gcs_server" and process.info.get("username"):
            owners.add(process.info["username"])
    return owners


# --- reaching a cluster ---------------------------------------------------------------------------


def check_reachable(address: str) -> None:
    """Fail in seconds, with one line, where `ray.init(address)` would retry for minutes and not
    even see Ctrl-C or SIGTERM: nothing listens there, or something that is not a Ray cluster.

    Ray's GCS (and the Ray Client server behind ray://) speak gRPC, so HTTP/2: any such server
    answers a client's connection preface with its SETTINGS frame at once.
    """
    if address in ("auto", "local"):
        return  # Ray finds (or starts) the instance itself and says so quickly when there is none
    host, port = _host_port(address)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    fix = "start it (`ray up CLUSTER.yaml` or `ray start --head`) or fix --address/RAY_ADDRESS"
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS cluster: no plain HTTP/2; Ray's own connect decides
            sock.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            sock.settimeout(max(0.5, deadline - time.monotonic()))
            header = _receive(sock, 9)
    except TimeoutError:
        raise UserError(f"cannot reach the Ray cluster at {address}: no answer within {CONNECT_TIMEOUT_S:.0f} s; "
                        f"{fix}") from None
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}; {fix}") from None
    if len(header) < 9 or header[3] != HTTP2_SETTINGS:
        raise UserError(f"{address} answers, but not as a Ray cluster: give the GCS address HOST:6379 (or "
                        "ray://HOST:10001); the dashboard's http://HOST:8265 is for submit/status/logs")


def _host_port(address: str) -> tuple[str, int]:
    scheme, _, rest = address.rpartition("://")
    if scheme and scheme != "ray":
        raise UserError(f"--address {address[:100]}: train and sweep connect to the cluster's GCS, HOST:6379 (or "
                        "ray://HOST:10001); an http:// dashboard URL is for submit/status/logs")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address[:100]}: give HOST:PORT, e.g. 10.0.0.5:6379")
    return host.strip("[]"), int(port)


def _receive(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def connect(address: str | None = None, num_cpus: int | None = None,
            need: ResourceRequest | None = None) -> Iterator[None]:
    """`ray.init` for the duration of a command, unless Ray is already up in this process.

    With no address, a local Ray is started with its dashboard on 127.0.0.1: the dashboard
    serves the State API that Train V2's placement-group cleaner needs (without it, trials that
    Tune stops early leak their workers and a sweep deadlocks). An address is probed first
    (`check_reachable`). `need`, the workers a run will ask for, is checked against what the
    cluster has (rsam_dist.resources): before a local Ray starts, and after connecting.
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
            check_reachable(address)
            ray.init(address=address, **common)
        else:
            if need is not None:
                need.check_local_ray(num_cpus)  # before paying for a Ray start
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
    except UserError:
        raise
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
        with sigterm_as_interrupt():  # again: ray.init replaced the handler
            if need is not None:
                need.ensure_available()
            yield
    finally:
        ray.shutdown()
        timeline.mark("ray_shut_down")
