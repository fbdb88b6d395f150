"""Reaching a cluster's Ray dashboard (and its `ray` commands) from this machine.

    rsam-dist status JOB_ID --address http://127.0.0.1:8265     # the dashboard's URL, as given
    rsam-dist status JOB_ID --cluster cluster/aws-gpu.yaml      # through `ray dashboard FILE`

`--cluster FILE` runs `ray dashboard FILE --port P` (Ray's own SSH port-forward) for the duration
of one command, so the dashboard never listens on a public port. Clients of a `ray start` cluster
authenticate with the shared token (~/.ray/auth_token), which Ray only sends when
RAY_AUTH_MODE=token; `job_client` sets it through rsam_dist.ray_cluster, the one place for RAY_*.
Ray sends that token with every request, so it goes only to this machine, through the
port-forward, or over https: a plain-http --address of another host (given, or replayed from the
job registry) is refused before any connection (`safe_address`).

Also here, for every client-side use of Ray in rsam_dist.jobs: the `ray` executable beside this
Python, the one line of a `ray` command's output that says what went wrong, quieting Ray's
client-side loggers, and `poll`.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import click

from rsam_dist.errors import UserError
from rsam_dist.ray_cluster import set_ray_environment

PORT_FORWARD_TIMEOUT_S = 90.0
DASHBOARD_TIMEOUT_S = 15.0
"""Seconds any Jobs API request may wait to connect, and then for an answer: a dashboard that
accepts connections but never replies would otherwise hang a command for ever.
$RSAM_DIST_DASHBOARD_TIMEOUT_S overrides it (the fault tests shorten it)."""
UPLOAD_TIMEOUT_S = 300.0
"""The wait for an answer to the upload of the job's files (the cluster stores them first)."""
# Ray's client-side loggers. The two SDK ones and ray.autoscaler set their own levels, so quieting
# "ray" alone is not enough.
QUIET_LOGGERS = (
    "ray", "ray.autoscaler", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
)

T = TypeVar("T")


def poll(fn: Callable[[], T], until: Callable[[T], bool], timeout_s: float, interval_s: float = 1.0) -> T:
    """Call `fn` every `interval_s` until `until(result)` holds or `timeout_s` has passed; the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = fn()
        if until(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)


def one_line(message: object, limit: int = 240) -> str:
    """An error's text on one line, at most `limit` characters, for a UserError."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the dashboard's URL -------------------------------------------------------------------------


def normalise_address(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


def is_loopback(host: str | None) -> bool:
    """Whether `host` (a name or an address literal, never looked up) is this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def safe_address(address: str, origin: str = "--address") -> str:
    """The dashboard URL for `address` if the cluster's auth token may go there: https to any
    host, plain http only to this machine (the `ray dashboard` port-forward is http://127.0.0.1:P).
    Refused before any connection is made, so the token never leaves in clear text."""
    url = normalise_address(address)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UserError(f"{origin} {one_line(address, 100)}: not a dashboard URL; give http://127.0.0.1:8265 "
                        "(this machine), https://HOST:PORT, or --cluster FILE")
    if parts.scheme.lower() == "http" and not is_loopback(parts.hostname):
        raise UserError(f"{origin} {one_line(url, 100)}: plain http to another machine would send the cluster's "
                        "auth token unencrypted; connect with --cluster FILE (Ray's SSH port-forward to the "
                        "dashboard) or give an https:// address")
    return url


def check_cluster_options(address: str | None, cluster: str | None, origin: str = "--address") -> None:
    """One way to reach the cluster, and a safe one: before any file is read or anything printed."""
    if address and cluster:
        raise UserError("give --address URL or --cluster FILE, not both")
    if address:
        safe_address(address, origin)


@contextmanager
def dashboard_url(address: str | None = None, cluster: str | None = None,
                  origin: str = "--address") -> Iterator[str]:
    """The dashboard's URL: --address (if safe, see safe_address), or a `ray dashboard FILE`
    port-forward while open."""
    check_cluster_options(address, cluster, origin)
    if address:
        yield safe_address(address, origin)
        return
    if not cluster:
        raise UserError("where is the cluster? give --cluster cluster/X.yaml or --address http://HOST:8265")
    with port_forward(cluster) as url:
        yield url


@contextmanager
def port_forward(cluster: str) -> Iterator[str]:
    """Run `ray dashboard CLUSTER --port P` (an SSH tunnel) and yield http://127.0.0.1:P."""
    if not Path(cluster).is_file():
        raise UserError(f"{cluster}: no such cluster file")
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    command = [ray_executable(), "dashboard", str(cluster), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def forward_state() -> str:
        if _port_open(port):
            return "open"
        return "exited" if process.poll() is not None else "starting"

    try:
        state = poll(forward_state, lambda s: s != "starting", PORT_FORWARD_TIMEOUT_S, interval_s=0.5)
        if state != "open":
            log.seek(0)
            why = last_error_line(log.read()) or f"no port-forward after {PORT_FORWARD_TIMEOUT_S:.0f} s"
            raise UserError(
                f"cannot reach the Ray dashboard of {cluster} through `ray dashboard`: {why}; "
                f"start the cluster with `ray up {cluster}` (and check your cloud credentials)"
            )
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


# --- `ray` commands and Ray's client-side output -------------------------------------------------


def ray_executable() -> str:
    """The `ray` of this Python's environment (a venv's bin/ need not be on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


def last_error_line(output: str) -> str:
    """The line of a `ray` command's output that says what went wrong (no colours, no prefix)."""
    lines = [click.unstyle(line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    causes = [line.removeprefix("The exception is: ") for line in lines if line.startswith("The exception is: ")]
    errors = [line for line in lines if re.search(r"(Error|Exception|error:|not found)", line)]
    return ((causes or errors or lines or [""])[-1])[:200]


@contextmanager
def quiet_ray_logs(swallow_output: bool = False) -> Iterator[None]:
    """Ray's client-side INFO/WARNING lines (packaging the working dir, websocket closed, the
    autoscaler's notes) are noise next to our one-line errors. With `swallow_output`, also what Ray
    prints itself (its cli_logger writes to stdout/stderr, not through logging)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.ExitStack() as stack:
            if swallow_output:
                stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
                stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# --- the job client ------------------------------------------------------------------------------


def use_token_auth() -> None:
    """Ray 2.59+ `ray start` clusters require the token; Ray only sends it in token mode."""
    already_set = bool(os.environ.get("RAY_AUTH_MODE"))
    set_ray_environment()
    if not already_set and "ray._raylet" in sys.modules:
        # Ray was imported (say, by the cluster-file check) before token mode was on: Ray read
        # its config then, so make it read the environment again.
        from ray._raylet import Config

        Config.initialize("")


def job_client(url: str):
    """A JobSubmissionClient for `url` whose every request has a timeout (Ray's have none), or a
    one-line UserError if nothing answers there."""
    use_token_auth()
    from ray.job_submission import JobSubmissionClient  # after use_token_auth: Ray reads it at import

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method, endpoint, **kwargs):
            # Every public call (and the version check in __init__) goes through here.
            read_s = UPLOAD_TIMEOUT_S if kwargs.get("data") is not None else dashboard_timeout_s()
            kwargs.setdefault("timeout", (dashboard_timeout_s(), read_s))
            return super()._do_request(method, endpoint, **kwargs)

    try:
        return TimedJobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 - ConnectionError, requests errors, auth errors
        if is_timeout(err):
            raise UserError(f"the Ray dashboard at {url} did not answer within {dashboard_timeout_s():g} s: "
                            "check that --address is the dashboard (port 8265) and that the cluster's head is "
                            "healthy") from None
        detail = one_line(err, 160)
        hint = "check ~/.ray/auth_token matches the cluster's" if "auth" in detail.lower() else (
            "start the cluster with `ray up CLUSTER.yaml` (or `ray start --head`) or check --address")
        raise UserError(f"cannot reach the Ray dashboard at {url}: {hint} ({detail})") from None


def dashboard_timeout_s() -> float:
    """DASHBOARD_TIMEOUT_S, or $RSAM_DIST_DASHBOARD_TIMEOUT_S when set to a positive number."""
    try:
        value = float(os.environ["RSAM_DIST_DASHBOARD_TIMEOUT_S"])
    except (KeyError, ValueError):
        return DASHBOARD_TIMEOUT_S
    return value if 0 < value < float("inf") else DASHBOARD_TIMEOUT_S


def is_timeout(err: BaseException) -> bool:
    """Whether `err` is a request that ran out of time (requests' Timeout is no TimeoutError)."""
    return isinstance(err, TimeoutError) or type(err).__name__ in ("Timeout", "ReadTimeout", "ConnectTimeout")
