"""SIGTERM stops a command the way Ctrl-C does: `kill PID` (or a job scheduler's stop) ends it
with the same one line and exit code 130, finished epochs and trials kept.

Ray replaces the SIGTERM handler when it starts (`ray.init`: `sys.exit(15)`; a local head node:
kill its processes, exit 1, no message), so `rsam_dist.ray_cluster.connect` installs this again
once Ray is up. During a sweep, Tune's own Ctrl-C handler runs instead (it saves the experiment
and stops the trials); Ray Train's (a silent exit 1 after aborting the run) is not used.

    with sigterm_as_interrupt():
        ...  # SIGTERM raises KeyboardInterrupt here
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM means what Ctrl-C means while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if getattr(handler, "__module__", "") == "ray.tune.tune":  # a sweep: Tune saves its state, then stops
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
