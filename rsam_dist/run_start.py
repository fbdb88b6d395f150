"""What a `train` command may do to a run directory, decided before anything is written.

- A new run never starts where a run exists (local directory or URI): that is what --resume is for.
- `--resume DIR` continues the run in DIR itself, wherever DIR now is, with only the overrides
  that cannot change its result.
- One command at a time per run (or sweep) directory: `hold_lock` refuses a second one, naming
  the holder.

    run, config = plan_new_run("configs/digits.yaml", ["train.name=a"])
    with hold_lock(run.local or run.path):
        ...
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsam_dist.config import Config, load_config, parse_override
from rsam_dist.errors import UserError
from rsam_dist.runs import RunDir, is_uri, load_run_config, with_run_dir, with_run_name

RESUMABLE_KEYS = ("train.epochs", "train.keep_checkpoints", "train.max_failures", "train.mask_images",
                  "train.compile", "scaling.cpus_per_worker", "scaling.wait_for_nodes_s")
"""The keys a resume may change: none of them changes what the finished epochs computed (threads
and compilation change speed, not the arithmetic beyond float rounding order)."""


def plan_new_run(config_file: str | None, overrides: tuple[str, ...] | list[str]) -> tuple[RunDir, Config]:
    """The run a new `train CONFIG_FILE` would create; refused where a run already exists."""
    if not config_file:
        raise UserError("give a CONFIG_FILE to train, or --resume RUN_DIR")
    config = with_run_name(load_config(config_file, overrides))
    run = RunDir.for_config(config)
    refuse_existing_run(run)
    return run, with_run_dir(config, run)


def plan_resume(
    resume_dir: str, overrides: tuple[str, ...] | list[str], config_file: str | None = None
) -> tuple[RunDir, Config]:
    """The run in `resume_dir` and its stored config with the allowed overrides applied."""
    if config_file:
        raise UserError(f"--resume continues {resume_dir} with the config it was started with: drop "
                        f"{config_file} (change only {', '.join(RESUMABLE_KEYS)} with --set)")
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUMABLE_KEYS:
            raise UserError(f"--set {key}: cannot change on --resume (it would change the run's result); "
                            f"allowed: {', '.join(RESUMABLE_KEYS)}; or start a new run with another train.name")
    run = RunDir.at(resume_dir)
    return run, load_run_config(run, tuple(overrides))


def refuse_existing_run(run: RunDir) -> None:
    if _run_exists(run):
        raise UserError(f"{run} already holds a run: continue it with --resume {run}, "
                        "or start a new one with another train.name")


def _run_exists(run: RunDir) -> bool:
    directory = run.local
    if directory is not None:
        return directory.exists() and any(directory.iterdir())
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(run.path)
        listing = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError) as err:
        raise UserError(f"{run}: cannot read the storage ({str(err).splitlines()[0][:100]})") from None
    return bool(listing)


@contextmanager
def hold_lock(target: str | Path, what: str = "run") -> Iterator[None]:
    """Hold an exclusive lock on `target` (a run or sweep directory) for the block's life.

    The lock file sits beside the directory (`.<name>.lock`), so taking it creates nothing that
    would block a retry. For a URI the lock is local to this machine. A second holder is refused
    in one line naming the first (its pid and command line).
    """
    lock_path = _lock_path(str(target))
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()[:200] or "another process"
            raise UserError(f"{target}: another rsam-dist command is using this {what} ({holder}); "
                            "wait for it to end, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: rsam-dist {' '.join(sys.argv[1:])}"[:200])
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock; the file stays (removing it would race)


def _lock_path(target: str) -> Path:
    if is_uri(target):
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "rsam-dist-locks" / f"{digest}.lock"
    path = Path(target).expanduser().resolve()
    return path.parent / f".{path.name}.lock"


def check_resume_fits(saved_config: dict | None, config: Config) -> None:
    """A checkpoint made with another config (other than the resumable keys) is refused."""
    if not saved_config:
        return
    current = config.to_dict()
    ignored = {*RESUMABLE_KEYS, "train.storage", "train.name"}
    for section, values in saved_config.items():
        for key, value in (values or {}).items():
            dotted = f"{section}.{key}"
            now = current.get(section, {}).get(key, value)
            if dotted not in ignored and now != value:
                raise UserError(f"the checkpoint was made with {dotted}={value!r:.60} but the run's config says "
                                f"{now!r:.60}: resume with the config the run was started with")
