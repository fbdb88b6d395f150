"""Ending the `rsam-dist` process as soon as its work is done.

Once a command has returned, Python's own shutdown still tears down every module it imported, one
object at a time: with torch, Ray Train and Tune loaded that took 1.1-2.2 s here (measured with a
script that only imports them), after every run and sweep had already printed its last line.
`exit_now` runs what must run at exit (the `atexit` handlers: Ray's shutdown, logging's flush,
multiprocessing's child cleanup), flushes the standard streams, and ends the process without the
teardown. Where a thread that Python would wait for is still running, it leaves the exit to Python.

    def run() -> NoReturn:        # the console script
        exit_now(exit_code_of(cli_main))
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def exit_code_of(command: Callable[[], object]) -> int | str | None:
    """Run `command` (a Click entry point in standalone mode, which always ends in SystemExit)
    and return the code it exits with."""
    try:
        command()
    except SystemExit as done:
        return done.code
    return 0


def exit_now(code: int | str | None) -> NoReturn:
    """Exit with `code` as `sys.exit(code)` would, skipping the interpreter's module teardown."""
    waited_for = [thread for thread in threading.enumerate()
                  if thread is not threading.main_thread() and thread.is_alive() and not thread.daemon]
    if waited_for or threading.current_thread() is not threading.main_thread():
        sys.exit(code)  # Python joins these threads before exiting; so do we, by leaving it to Python
    if isinstance(code, str):  # sys.exit("message"): the message on stderr, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # noqa: SLF001 - the documented handlers, run as Python would run them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be written to it
            pass
    os._exit(code if isinstance(code, int) else 0)
