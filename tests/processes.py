"""Processes and Ray heads that a test starts, and tearing down exactly those.

Nothing here looks at a process the tests did not start: a head is the `ray start --head --block`
process we spawned and its descendants; a driver is the `rsam-dist` subprocess we spawned and its
descendants (the local Ray it starts included). `ray stop` is never used: it stops every Ray on the
machine, other people's too.

    head = start_head(Path(tempfile.mkdtemp(prefix="rsh", dir="/tmp")), "--num-cpus=2")
    ...                       # rsam-dist ... --address head.address
    stop_head(head)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = (
    "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
    "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port",
    "ray-client-server-port",
)
"""Every port a head opens, each given a free one so the head never collides with another Ray."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- process trees --------------------------------------------------------------------------------


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    """`root` and every process below it (children, grandchildren, ...)."""
    children = _children_by_parent()
    found, stack = [root], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(root: int, grace_s: float = 5.0) -> None:
    """SIGTERM `root` and its descendants (found before any dies, so orphans are not lost), then
    SIGKILL whatever is left of them after `grace_s`."""
    pids = descendants(root)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(is_running(pid) for pid in pids):
        time.sleep(0.2)
    for pid in set(pids) | set(descendants(root)):
        if is_running(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


class Driver:
    """An `rsam-dist` subprocess whose output goes to a file, started in a process group of its
    own: `stop` kills it, its descendants, and whatever of its group outlived it (a local Ray)."""

    def __init__(self, command: list[str], log: Path, **popen):
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                            stdin=subprocess.DEVNULL, start_new_session=True, **popen)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> None:
        """Kill what is left of the driver: its process tree, then its process group (processes
        of the group that the driver's death orphaned, such as the Ray it started)."""
        if self.process.poll() is None:
            kill_tree(self.process.pid)
        for number in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, number)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(1.0)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal(self.process.pid, signal.SIGKILL)


# --- Ray heads --------------------------------------------------------------------------------


@dataclass
class Head:
    process: subprocess.Popen
    temp_dir: Path
    address: str
    """host:port of the GCS, for `--address` and `ray.init(address=...)`."""
    dashboard: str
    """http://127.0.0.1:<port>, for the State API and Ray Jobs."""


def head_environment() -> dict[str, str]:
    """This process's environment, with token auth and this venv's python first on PATH (the
    workers run it, and import rsam_dist from this checkout through PYTHONPATH)."""
    env = dict(os.environ, RAY_AUTH_MODE="token")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_auth_token(env: dict[str, str]) -> None:
    """A Ray started with token auth needs a token, and looks for it in HOME (a temporary one in
    the tests): made the first time a test starts a Ray, whichever test that is."""
    token = Path(env["HOME"]) / ".ray" / "auth_token"
    if not token.exists():
        subprocess.run([RAY, "get-auth-token", "--generate"], check=True, capture_output=True, env=env)


def start_head(temp_dir: Path, *flags: str, timeout_s: float = 120.0) -> Head:
    """`ray start --head --block` on loopback with free ports and its own `temp_dir` (keep that
    path short: Ray's unix socket paths must stay under 108 characters)."""
    env = head_environment()
    ensure_auth_token(env)
    ports = {flag: free_port() for flag in PORT_FLAGS}
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", *[f"--{flag}={port}" for flag, port in ports.items()],
        *flags,
    ]
    log = temp_dir / "ray-start.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(process, temp_dir, f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}")
    try:
        _wait_until_up(head, log, timeout_s)
    except BaseException:
        stop_head(head)
        raise
    return head


def _wait_until_up(head: Head, log: Path, timeout_s: float) -> None:
    """Until `ray start` says the runtime started and the dashboard (the State API Train V2 needs) answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited:\n{log.read_text()[-3000:]}")
        if "Ray runtime started" in log.read_text(errors="replace") and _answers(head.dashboard):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ray head within {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
        return True
    except urllib.error.HTTPError:  # it answered (e.g. 401 without a token): it is up
        return True
    except OSError:
        return False


def stop_head(head: Head) -> None:
    """Kill the head's `ray start --block` process and everything it started; remove its temp dir."""
    kill_tree(head.process.pid)
    try:
        head.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _signal(head.process.pid, signal.SIGKILL)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def trainer_resources(**extra: float) -> str:
    """--resources for a head whose sweeps' trial drivers need the custom `train_driver` resource."""
    return "--resources=" + json.dumps({"train_driver": 8, **extra})
