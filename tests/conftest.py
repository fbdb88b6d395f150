"""Shared fixtures: a private HOME, one Ray head for the whole session, a finished local run.

- HOME points at a temporary folder for the whole session (set before any test module is
  imported), so Ray's ~/.ray/auth_token, matplotlib's caches and anything else written under ~
  land there, never in the real home.
- `ray_address`: one `ray start --head` on loopback (its own temp dir, free ports, 2 CPUs and
  `train_driver` slots for sweep trial drivers), started by the first test that asks for it and
  torn down at the end of the session. Tests pass it as `--address` / `address=`.
- `exclusive_ray`: for the tests whose point is a cluster of their own (a killed worker, several
  nodes, Ray Jobs heads): it stops the shared head first, since rsam-dist refuses a second local
  Ray and Train's placement-group cleaner must not see two. The shared head starts again when a
  later test asks for it; test files order their exclusive tests first to keep restarts rare.
  A `ray` test that asks for neither (it starts a local Ray through the CLI) gets the same.
- `grid_sweep`, `ddp_grid_sweep`, `optuna_arms_sweep`: tiny real sweeps on the shared head, run
  once for the sweep, report and browser tests.
- GPU tests (`@pytest.mark.gpu`, run by `make test-gpu`) are skipped where CUDA is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from rsam_dist.config import DEBUG_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file (processes.py)

from processes import Head, ensure_auth_token, head_environment, start_head, stop_head, trainer_resources  # noqa: E402
from sweep_files import write_sweep  # noqa: E402

SHARED_HEAD_CPUS = 2
"""Logical CPUs of the shared head: a 2-worker run, or two 1-worker sweep trials at once."""

_saved_environment: dict[str, str | None] = {}
_private_home: Path | None = None


def pytest_configure(config) -> None:
    global _private_home
    _private_home = Path(tempfile.mkdtemp(prefix="rsam-test-home-"))
    environment = {
        "HOME": str(_private_home),
        "RAY_AUTH_MODE": "token",  # clients of a `ray start` head need it (rsam-dist sets it too)
        # Ray waits 30 s for a new GCS to bind its port; a busy 2-core machine can take longer.
        "RAY_gcs_server_port_wait_time_s": os.environ.get("RAY_gcs_server_port_wait_time_s", "120"),
    }
    for key, value in environment.items():
        _saved_environment[key] = os.environ.get(key)
        os.environ[key] = value


def pytest_unconfigure(config) -> None:
    for key, value in _saved_environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if _private_home is not None:
        shutil.rmtree(_private_home, ignore_errors=True)


def pytest_collection_modifyitems(config, items) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none is visible here); run `make test-gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo_root() -> Path:
    """The repository root (where configs/ lives)."""
    return REPO_ROOT


@pytest.fixture
def normalised_images() -> torch.Tensor:
    """A small batch of random images normalised as the data pipeline does: values in [-1, 1]."""
    generator = torch.Generator().manual_seed(1234)
    pixels = torch.randint(0, 256, (6, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return (pixels.float() / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch `--local` run on digits with the debug model (copy it before changing it)."""
    storage = tmp_path_factory.mktemp("finished")
    script = Path(sys.executable).with_name("rsam-dist")
    overrides = [*DEBUG_MODEL, "data.limit_train=256", "data.limit_test=128", "train.epochs=2",
                 "train.mask_images=2", "train.name=done", f"train.storage={storage}"]
    command = [str(script), "train", str(REPO_ROOT / "configs/digits.yaml"), "--local"]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return storage / "done"


# --- Ray ---------------------------------------------------------------------------------------


class SharedHead:
    """The session's Ray head, started on first use and stoppable for tests that need no other Ray."""

    def __init__(self) -> None:
        self.head: Head | None = None

    def address(self) -> str:
        if self.head is None or self.head.process.poll() is not None:
            temp_dir = Path(tempfile.mkdtemp(prefix="rsh", dir="/tmp"))  # short: unix socket paths
            self.head = start_head(temp_dir, f"--num-cpus={SHARED_HEAD_CPUS}", trainer_resources())
        return self.head.address

    @property
    def dashboard(self) -> str:
        self.address()
        return self.head.dashboard

    def stop(self) -> None:
        if self.head is not None:
            # This process may still be connected (an in-process sweep): a Ray client whose GCS
            # dies aborts the process after 60 s, which would fail the session that passed.
            import ray

            if ray.is_initialized():
                ray.shutdown()
            stop_head(self.head)
            self.head = None


_session_head: SharedHead | None = None


@pytest.fixture(scope="session")
def shared_head() -> Iterator[SharedHead]:
    global _session_head
    _session_head = SharedHead()
    yield _session_head
    _session_head.stop()
    _session_head = None


@pytest.fixture(autouse=True)
def _stop_the_shared_head_before_a_ray_of_its_own(request) -> None:
    """A `ray` test that does not ask for the shared head starts a Ray of its own (a local
    `rsam-dist train`/`sweep`), which rsam-dist refuses while another runs: stop the shared head."""
    if (_session_head is not None and request.node.get_closest_marker("ray") is not None
            and "shared_head" not in request.fixturenames):
        _session_head.stop()


@pytest.fixture
def ray_address(shared_head: SharedHead) -> str:
    """The shared head's GCS address (host:port): pass it as `--address` or `address=`."""
    return shared_head.address()


@pytest.fixture
def exclusive_ray(shared_head: SharedHead) -> None:
    """No shared head while this test runs: it starts a Ray of its own (with token auth, so with a
    token, also when it is the first test to start a Ray)."""
    shared_head.stop()
    ensure_auth_token(head_environment())


# --- two real sweeps, shared by test_sweep.py and test_report.py -------------------------------


def train_worker_actors(shared: SharedHead) -> int:
    """How many Ray Train workers the shared head has started so far (finished ones included)."""
    from ray.util.state import list_actors

    # The dashboard's URL, not the GCS address: from a GCS address the State API makes a GCS client
    # that lives on in this process and aborts it 60 s after that head is stopped.
    actors = list_actors(address=shared.dashboard, filters=[("class_name", "=", "RayTrainWorker")],
                         limit=10_000, raise_on_missing_output=False)  # the State API's most
    return len(actors)


@dataclass(frozen=True)
class FinishedSweep:
    directory: Path
    train_workers: int
    """Ray Train workers the sweep started (counted on the head before and after)."""


def _run_sweep(shared: SharedHead, sweep_file: Path) -> FinishedSweep:
    from rsam_dist.sweep import load_sweep, run_sweep

    address = shared.address()
    before = train_worker_actors(shared)
    directory = run_sweep(load_sweep(sweep_file), address=address)
    return FinishedSweep(directory, train_worker_actors(shared) - before)


@pytest.fixture(scope="session")
def grid_sweep(tmp_path_factory, shared_head) -> FinishedSweep:
    """A grid over glimpses {1, 2}, each trial a 1-worker run of 2 epochs (both at once)."""
    sweep_file = write_sweep(tmp_path_factory.mktemp("grid"), "grid", search={"model.glimpses": {"grid": [1, 2]}},
                             trial={"num_workers": 1, "cpus_per_worker": 1})
    return _run_sweep(shared_head, sweep_file)


@pytest.fixture(scope="session")
def ddp_grid_sweep(tmp_path_factory, shared_head) -> FinishedSweep:
    """The same grid, each trial a 2-worker DDP run (one trial at a time on the 2-CPU head)."""
    sweep_file = write_sweep(tmp_path_factory.mktemp("ddpgrid"), "grid", search={"model.glimpses": {"grid": [1, 2]}},
                             trial={"num_workers": 2})
    return _run_sweep(shared_head, sweep_file)


@pytest.fixture(scope="session")
def optuna_arms_sweep(tmp_path_factory, shared_head) -> FinishedSweep:
    """Optuna over the learning rate within each arm of a feedback grid: two TPE studies of 2 trials."""
    sweep_file = write_sweep(
        tmp_path_factory.mktemp("arms"), "arms", algorithm="optuna", num_samples=2, max_concurrent_trials=2,
        search={"model.feedback": {"grid": [True, False]}, "optim.lr": {"loguniform": [0.003, 0.03]}},
        set={"train.epochs": 1},
    )
    return _run_sweep(shared_head, sweep_file)
