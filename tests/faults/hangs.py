"""Fault rows for what used to hang: resources the cluster cannot give, an --address where no
cluster answers, a dashboard that never replies, and a loss that turns NaN or diverges.

Each row keeps the time limit the issue promises, plus an allowance for what the command must do
first and that is not the promise: starting Python and importing torch and Ray (STARTUP_S), and,
for rows that start a local Ray (SIGTERM during a run), that Ray start (RAY_START_S). Resources
are refused before any Ray starts (train: rsam_dist.resources; sweeps: the plan's pre-flight).

The fake endpoints are two sockets on 127.0.0.1 made when this module loads: one bound but never
listening (every connection is refused, and no other process can take its port), one listening
but never accepting or answering (the kernel completes the TCP handshake; nothing ever replies).

    flock /tmp/rsam-ray.lock .venv/bin/python -m pytest -q tests/test_faults.py -k "hang- or loss-"
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from faults import Case, Env
from faults.runs import DEBUG

STARTUP_S = 15.0
"""Python, torch and Ray imports before any check can run: 3-5 s on an idle 2-core machine, up to
15 s while other test processes share its cores."""
RAY_START_S = 30.0
"""`ray.init` of a local Ray (with its dashboard) measured on this 2-core machine: 20-26 s while
other work shared the cores, 5-8 s idle (RAY-NOTES)."""
REFUSED_S = 10.0
"""The promise: resources the cluster cannot give are refused within 10 s (of what it can tell)."""
UNREACHABLE_S = 30.0
"""The promise: an --address where nothing (or nothing that answers) listens ends within 30 s."""
STOPPED_S = 10.0
"""SIGTERM ends a command within this long (Ray's shutdown included)."""
FAST_DASHBOARD_TIMEOUT = {"RSAM_DIST_DASHBOARD_TIMEOUT_S": "2"}
"""Jobs API rows wait 2 s for the silent dashboard instead of 20 s; one row keeps the default."""

SMALL = ("--set", "data.limit_train=256", "--set", "data.limit_test=128", "--set", "train.mask_images=0")
TRAIN = ("train", "{repo}/configs/digits.yaml", *DEBUG, *SMALL)


def _refusing_port() -> int:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    _kept.append(holder)
    return holder.getsockname()[1]


def _silent_port() -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel accepts connections into the backlog; nobody ever reads or replies
    _kept.append(listener)
    return listener.getsockname()[1]


_kept: list[socket.socket] = []
CLOSED = _refusing_port()
SILENT = _silent_port()
CLOSED_GCS = f"127.0.0.1:{CLOSED}"
SILENT_GCS = f"127.0.0.1:{SILENT}"
CLOSED_DASHBOARD = f"http://127.0.0.1:{CLOSED}"
SILENT_DASHBOARD = f"http://127.0.0.1:{SILENT}"


def sweep_file(trial: dict) -> Callable[[Env], None]:
    """A setup writing sweep.yaml: one small digits trial of shape `trial`."""

    def setup(env: Env) -> None:
        document = {
            "name": "hang", "storage": "runs", "base": str(env.repo / "configs/digits.yaml"),
            "set": {"model.hidden_size": 64, "model.glimpses": 2, "data.limit_train": 256, "data.limit_test": 128,
                    "train.epochs": 1, "train.mask_images": 0},
            "trial": trial,
        }
        (env.tmp / "sweep.yaml").write_text(yaml.safe_dump(document))

    return setup


def nothing_written(env: Env, stdout: str, stderr: str) -> None:
    left = [p.relative_to(env.tmp).as_posix() for p in env.tmp.rglob("*")
            if p.is_file() and not p.name.endswith(".lock") and p.name != "sweep.yaml"]
    assert not left, f"a refused start wrote files: {left[:5]}"


def stopped_early(env: Env, stdout: str, stderr: str) -> None:
    """The NaN stopped the first epoch at its first check, and nothing of that epoch was kept."""
    assert "first 8 steps" in stderr, stderr
    run = env.tmp / "runs" / "nan"
    assert not list(run.glob("checkpoint_epoch=*")), "an epoch with a NaN loss was checkpointed"
    assert not (run / "best").exists(), "an epoch with a NaN loss was saved as best"


def diverged_not_best(env: Env, stdout: str, stderr: str) -> None:
    """Each diverged epoch is named (lr=1e6 diverges within the first: a loss of 1e5 against a
    uniform guess's 4.6), and none of them is saved as `best`."""
    assert all(f"epoch {epoch} diverged" in stderr for epoch in (1, 2, 3)), stderr
    assert (env.tmp / "runs" / "diverged" / "checkpoint_epoch=0002").is_dir(), "the run did not go on"
    assert not (env.tmp / "runs" / "diverged" / "best").exists(), "a diverged epoch was saved as best"


_signalled: dict[Path, float] = {}


def sigterm_after_first_epoch(name: str) -> Callable[[Env], None]:
    """A setup whose thread sends SIGTERM to the rsam-dist command (found by its working
    directory) once runs/NAME/metrics.jsonl has its first epoch."""

    def setup(env: Env) -> None:
        def send() -> None:
            metrics = env.tmp / "runs" / name / "metrics.jsonl"
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not (metrics.is_file() and metrics.stat().st_size):
                time.sleep(0.2)
            for pid in _commands_in(env.tmp):
                _signalled[env.tmp] = time.monotonic()
                os.kill(pid, signal.SIGTERM)

        threading.Thread(target=send, daemon=True).start()

    return setup


def _commands_in(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if (b"rsam-dist" in command or b"rsam_dist.cli" in command) and Path(entry / "cwd").resolve() == directory:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def stopped_soon(env: Env, stdout: str, stderr: str) -> None:
    sent = _signalled.pop(env.tmp, None)
    assert sent is not None, "the run ended before its first epoch was recorded"
    took = time.monotonic() - sent
    print(f"SIGTERM stopped the command in {took:.1f} s")
    assert took < STOPPED_S, f"SIGTERM took {took:.1f} s to stop the command"


REFUSED = dict(exit_code=2, subprocess=True, check=nothing_written)
UNREACHABLE = dict(exit_code=2, subprocess=True, timeout=UNREACHABLE_S + STARTUP_S, check=nothing_written)
SILENT_JOBS = dict(exit_code=2, subprocess=True, env=FAST_DASHBOARD_TIMEOUT, timeout=UNREACHABLE_S + STARTUP_S)
NAN_LR = ("--set", "optim.lr=1e6", "--set", "optim.batch_size=8")
"""lr=1e6 in steps of 8 images: the loss is NaN within the first 8 steps (32 in the epoch)."""

CASES = [
    # Resources: train is refused before a local Ray starts (Ray's own detection of this machine).
    Case("hang-train-too-many-workers", (*TRAIN, "--set", "scaling.num_workers=4"),
         words=("4 workers of 1 CPU", "2 CPU", "scaling.num_workers"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    Case("hang-train-gpus-on-cpu-ray", (*TRAIN, "--set", "scaling.gpus_per_worker=1"),
         words=("1 GPU", "has no GPU", "scaling.gpus_per_worker=0"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    Case("hang-train-worker-bigger-than-any-node", (*TRAIN, "--set", "scaling.cpus_per_worker=3"),
         words=("3 CPU", "no node big enough"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    # Sweeps too (the plan's pre-flight on this machine; on a cluster, the check after connecting).
    Case("hang-sweep-too-many-workers", ("sweep", "sweep.yaml"), setup=sweep_file({"num_workers": 4}),
         words=("4 workers of 1 CPU", "2 CPU"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    Case("hang-sweep-gpus-on-cpu-ray", ("sweep", "sweep.yaml"), setup=sweep_file({"gpus_per_worker": 1}),
         words=("gpus_per_worker", "no GPU"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    Case("hang-sweep-trial-bigger-than-any-node", ("sweep", "sweep.yaml"), setup=sweep_file({"cpus_per_worker": 4}),
         words=("4 CPU", "2 CPU"), timeout=REFUSED_S + STARTUP_S, **REFUSED),
    # An --address where nothing listens, or something that never answers.
    Case("hang-train-address-refused", (*TRAIN, "--address", CLOSED_GCS), words=("cannot reach", CLOSED_GCS),
         **UNREACHABLE),
    Case("hang-train-address-never-answers", (*TRAIN, "--address", SILENT_GCS), words=("no answer",),
         **UNREACHABLE),
    Case("hang-sweep-address-refused", ("sweep", "sweep.yaml", "--address", CLOSED_GCS),
         setup=sweep_file({"num_workers": 1}), words=("cannot reach",), **UNREACHABLE),
    Case("hang-submit-address-refused", ("submit", "train", "{repo}/configs/digits.yaml", "--address",
                                         CLOSED_DASHBOARD), words=("cannot reach the Ray dashboard",), **UNREACHABLE),
    Case("hang-status-address-refused", ("status", "rsam-train-x", "--address", CLOSED_DASHBOARD),
         words=("cannot reach the Ray dashboard",), **UNREACHABLE),
    # A dashboard that accepts connections and never answers: every Jobs API call has a timeout.
    Case("hang-status-dashboard-never-answers-default-timeout", ("status", "rsam-train-x", "--address",
                                                                 SILENT_DASHBOARD),
         exit_code=2, words=("did not answer within 15 s",), subprocess=True, timeout=UNREACHABLE_S + STARTUP_S,
         slow=True),  # the default's 15 s; the row below checks the same path with a 2 s limit
    Case("hang-status-dashboard-never-answers", ("status", "rsam-train-x", "--address", SILENT_DASHBOARD),
         words=("did not answer within 2 s",), **SILENT_JOBS),
    Case("hang-logs-dashboard-never-answers", ("logs", "rsam-train-x", "--address", SILENT_DASHBOARD),
         words=("did not answer",), **SILENT_JOBS),
    Case("hang-logs-follow-dashboard-never-answers", ("logs", "rsam-train-x", "-f", "--address", SILENT_DASHBOARD),
         words=("did not answer",), **SILENT_JOBS),
    Case("hang-stop-dashboard-never-answers", ("stop", "rsam-train-x", "--address", SILENT_DASHBOARD),
         words=("did not answer",), **SILENT_JOBS),
    Case("hang-submit-dashboard-never-answers", ("submit", "train", "{repo}/configs/digits.yaml", "--address",
                                                 SILENT_DASHBOARD), words=("did not answer",), **SILENT_JOBS),
    # SIGTERM stops a command as Ctrl-C does (one line, exit 130), in this process and on Ray.
    Case("hang-sigterm-stops-local-train", (*TRAIN, "--local", "--set", "train.epochs=50", "--set", "train.name=t"),
         130, ("interrupted",), setup=sigterm_after_first_epoch("t"), check=stopped_soon, subprocess=True,
         changes=("runs",), timeout=STARTUP_S + 120),
    Case("hang-sigterm-stops-ray-train", (*TRAIN, "--set", "train.epochs=50", "--set", "train.name=t"), 130,
         ("interrupted",), setup=sigterm_after_first_epoch("t"), check=stopped_soon, subprocess=True,
         changes=("runs",), timeout=STARTUP_S + RAY_START_S + 120, slow=True),
    # Losses.
    Case("loss-nan-stops-within-steps", (*TRAIN, "--local", *NAN_LR, "--set", "train.name=nan"), 2,
         ("training loss became nan", "lower optim.lr"), check=stopped_early, timeout=120),
    Case("loss-diverged-reported-never-best", (*TRAIN, "--local", "--set", "optim.lr=1e6", "--set", "train.epochs=3",
                                              "--set", "train.name=diverged"), 0,
         ("diverged", "not saved as best"), check=diverged_not_best, changes=("runs",), timeout=120),
]
