"""rsam_dist.process_exit: the fast exit keeps sys.exit's meaning (codes, messages, atexit handlers,
threads Python would wait for, buffered output) and the console script goes through it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _exit_with(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        from rsam_dist.process_exit import exit_code_of, exit_now
        out = Path({str(tmp_path)!r})
        atexit.register(lambda: (out / "atexit-ran").write_text("yes"))
    """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(("code", "status"), [("0", 0), ("3", 3), ("None", 0)])
def test_the_status_is_the_code_and_atexit_handlers_run(tmp_path, code, status):
    done = _exit_with(f"sys.stdout.write('buffered, no newline'); exit_now({code})", tmp_path)
    assert done.returncode == status
    assert done.stdout == "buffered, no newline"  # flushed before the process ended
    assert (tmp_path / "atexit-ran").read_text() == "yes"


def test_a_message_goes_to_stderr_with_status_1(tmp_path):
    done = _exit_with("exit_now('rsam-dist: error: no such file')", tmp_path)
    assert (done.returncode, done.stderr.strip()) == (1, "rsam-dist: error: no such file")


def test_a_running_thread_is_waited_for_as_python_would(tmp_path):
    done = _exit_with("""
        def late():
            time.sleep(1.0)
            (out / "thread-finished").write_text("yes")
        threading.Thread(target=late).start()
        exit_now(4)
    """, tmp_path)
    assert done.returncode == 4
    assert (tmp_path / "thread-finished").read_text() == "yes"
    assert (tmp_path / "atexit-ran").read_text() == "yes"


def test_the_code_of_a_click_command_is_what_it_exits_with(tmp_path):
    done = _exit_with("""
        import click
        @click.command()
        def command():
            raise click.UsageError("bad option")
        print(exit_code_of(lambda: command.main(["--nope"])))
    """, tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "2"


def test_the_console_script_exits_through_it():
    done = subprocess.run([sys.executable, "-m", "rsam_dist.cli", "validate", "/no/such/config.yaml"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip() == "rsam-dist: error: /no/such/config.yaml: no such file"
    entry = [line for line in (REPO / "pyproject.toml").read_text().splitlines() if line.startswith("rsam-dist =")]
    assert entry == ['rsam-dist = "rsam_dist.cli:run"']
