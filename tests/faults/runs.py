"""Fault rows for run directories and checkpoints: unsafe or broken checkpoints, resume rules,
run identity, names, refused starts, locks and unreadable config files."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import torch
import yaml

from faults import Case, Env

RUN = "runs/done"
DEBUG = ("--set", "model.hidden_size=64", "--set", "model.glimpses=2")
SMALL = ("--set", "data.limit_train=256", "--set", "data.limit_test=128", "--set", "train.mask_images=2")
RESUME_ONE_MORE = ("train", "--resume", RUN, "--local", "--set", "train.epochs=3")
NEW_RUN = ("train", "{repo}/configs/digits.yaml", *DEBUG, *SMALL, "--set", "train.storage=runs")
_held_locks: list = []


def copy_run(env: Env) -> Path:
    target = env.tmp / RUN
    shutil.copytree(env.finished_run, target)
    return target


def newest_state(run: Path) -> Path:
    return sorted(run.glob("checkpoint_epoch=*"))[-1] / "state.pt"


class _RunsCode:
    """Unpickling this runs a shell command: a checkpoint must never be loaded that way."""

    def __reduce__(self):
        return (os.system, ("touch canary",))


def plant_pickle(env: Env) -> None:
    state = torch.load(newest_state(copy_run(env)), weights_only=True)
    state["extra"] = _RunsCode()
    torch.save(state, newest_state(env.tmp / RUN))


def corrupt(env: Env) -> None:
    newest_state(copy_run(env)).write_bytes(os.urandom(4096))


def truncate(env: Env) -> None:
    path = newest_state(copy_run(env))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(env: Env) -> None:
    newest_state(copy_run(env)).write_bytes(b"")


def wrong_shape(env: Env) -> None:
    path = newest_state(copy_run(env))
    state = torch.load(path, weights_only=True)
    state["model"] = {name: torch.zeros(3) for name in state["model"]}
    torch.save(state, path)


def all_corrupt(env: Env) -> None:
    for checkpoint in copy_run(env).glob("checkpoint_epoch=*"):
        (checkpoint / "state.pt").write_bytes(b"not a checkpoint")


def without_name(env: Env) -> None:
    config_file = copy_run(env) / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    del config["train"]["name"], config["train"]["storage"]
    config_file.write_text(yaml.safe_dump(config))


def hold_run_lock(env: Env) -> None:
    copy_run(env)
    handle = open(env.tmp / "runs" / ".done.lock", "a+")  # noqa: SIM115 - released by the check
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("pid 4242: rsam-dist train --resume runs/done")
    handle.flush()
    _held_locks.append(handle)


def release_locks(env: Env, stdout: str, stderr: str) -> None:
    while _held_locks:
        _held_locks.pop().close()


def write(name: str, payload: bytes):
    def setup(env: Env) -> None:
        (env.tmp / name).write_bytes(payload)

    return setup


ALIAS_BOMB = b"""a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
model: {glimpses: *e}
"""


def resumed_to_epoch_3(env: Env, stdout: str, stderr: str) -> None:
    assert "epoch   3/3" in stdout, stdout
    assert (env.tmp / RUN / "checkpoint_epoch=0002" / "state.pt").is_file()
    assert not (env.tmp / "canary").exists(), "a checkpoint ran code"
    assert not (env.finished_run / "checkpoint_epoch=0002").exists(), "the resume wrote into the original run"


def no_run_left(env: Env, stdout: str, stderr: str) -> None:
    assert not (env.tmp / "runs" / "fresh").exists(), "a refused start left a run directory"


def nothing_in_none(env: Env, stdout: str, stderr: str) -> None:
    resumed_to_epoch_3(env, stdout, stderr)
    assert not any(env.tmp.rglob("None")), "a run went to runs/None"


def short_error(env: Env, stdout: str, stderr: str) -> None:
    assert len(stderr) < 400, f"{len(stderr)} characters on stderr"


FALLBACK = dict(exit_code=0, words=("skipping", "checkpoint_epoch=0001"), check=resumed_to_epoch_3,
                changes=(RUN,), timeout=120)

CASES = [
    Case("checkpoint-planted-pickle-never-runs", RESUME_ONE_MORE, setup=plant_pickle, **FALLBACK),
    Case("checkpoint-corrupt-falls-back", RESUME_ONE_MORE, setup=corrupt, **FALLBACK),
    Case("checkpoint-truncated-falls-back", RESUME_ONE_MORE, setup=truncate, **FALLBACK),
    Case("checkpoint-empty-falls-back", RESUME_ONE_MORE, setup=empty, **FALLBACK),
    Case("checkpoint-wrong-shape-falls-back", RESUME_ONE_MORE, setup=wrong_shape, **FALLBACK),
    Case("checkpoint-none-usable", RESUME_ONE_MORE, 2, ("no usable checkpoint", RUN), setup=all_corrupt),
    Case("resume-a-copy-stays-in-the-copy", RESUME_ONE_MORE, 0, setup=copy_run, check=resumed_to_epoch_3,
         changes=(RUN,), timeout=120),
    Case("resume-config-without-name", RESUME_ONE_MORE, 0, setup=without_name, check=nothing_in_none,
         changes=(RUN,), timeout=120),
    Case("resume-refuses-result-changing-set", (*RESUME_ONE_MORE, "--set", "optim.lr=0.5"), 2,
         ("optim.lr", "cannot change on --resume"), setup=copy_run),
    Case("resume-refuses-model-set", ("train", "--resume", RUN, "--set", "model.glimpses=4"), 2,
         ("model.glimpses",), setup=copy_run),
    Case("resume-refuses-config-file", ("train", "{repo}/configs/digits.yaml", "--resume", RUN), 2,
         ("drop",), setup=copy_run),
    Case("resume-not-a-run", ("train", "--resume", "nowhere", "--local"), 2, ("not a run directory",)),
    Case("new-run-over-existing-local", (*NEW_RUN, "--local", "--set", "train.name=done"), 2,
         ("already holds a run", "--resume"), setup=copy_run),
    Case("new-run-over-existing-ray", (*NEW_RUN, "--set", "train.name=done"), 2,
         ("already holds a run",), setup=copy_run),
    Case("name-with-slash", (*NEW_RUN, "--local", "--set", "train.name=a/b"), 2, ("train.name",)),
    Case("name-dot-dot", (*NEW_RUN, "--local", "--set", "train.name=.."), 2, ("train.name",)),
    Case("name-dot", (*NEW_RUN, "--local", "--set", "train.name=."), 2, ("train.name",)),
    Case("name-too-long", (*NEW_RUN, "--local", "--set", "train.name=" + "n" * 300), 2, ("train.name",)),
    Case("refused-start-leaves-no-run", (*NEW_RUN, "--local", "--set", "train.name=fresh",
                                         "--set", "data.name=cifar10", "--set", "data.root=nodata",
                                         "--set", "data.download=false"), 2, ("cifar",), check=no_run_left),
    Case("second-command-on-a-run-refused", RESUME_ONE_MORE, 2, ("another rsam-dist command", "pid 4242"),
         setup=hold_run_lock, check=release_locks),
    Case("config-not-utf8", ("train", "bad.yaml", "--local"), 2, ("bad.yaml", "not a text file"),
         setup=write("bad.yaml", b"\xff\xfe\x00model: {}\x9c")),
    Case("config-alias-bomb-short-error", ("validate", "bomb.yaml"), 2, ("bomb.yaml",),
         setup=write("bomb.yaml", ALIAS_BOMB), check=short_error),
    Case("config-is-a-directory", ("validate", "runs"), 2, ("runs",), setup=copy_run),
]
