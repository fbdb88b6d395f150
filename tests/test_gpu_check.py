"""The GPU check: a GPU below the installed torch's compute capability floor is refused in one
line that names a cluster file that works; current GPUs and CPU-only machines pass."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rsam_dist.distributed import pick_device
from rsam_dist.errors import UserError
from rsam_dist.gpu_check import check_gpu_supported, min_supported_capability
from rsam_dist.jobs.cluster_file import validate_cluster_file

# torch 2.14's CUDA 13 wheels (what requirements.lock pins)
REPO_ROOT = Path(__file__).resolve().parents[1]
CU13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def test_min_supported_capability_reads_sm_entries_only():
    assert min_supported_capability(CU13_ARCHS) == (7, 5)
    assert min_supported_capability(["sm_90a", "sm_100", "compute_50"]) == (9, 0)
    assert min_supported_capability([]) is None


def test_paper_gpu_is_refused_with_a_config_that_works():
    with pytest.raises(UserError) as caught:
        check_gpu_supported(capability=(3, 0), arch_list=CU13_ARCHS, name="GRID K520", cuda_available=True)
    message = str(caught.value)
    assert "GRID K520" in message and "3.0" in message and "7.5" in message
    assert "cluster/aws-gpu.yaml" in message and "\n" not in message


@pytest.mark.parametrize("name, capability", [("NVIDIA A10G", (8, 6)), ("Tesla T4", (7, 5)),
                                              ("NVIDIA H100", (9, 0)), ("NVIDIA L4", (8, 9))])
def test_current_gpus_pass(name, capability):
    check_gpu_supported(capability=capability, arch_list=CU13_ARCHS, name=name, cuda_available=True)


def test_no_cuda_is_fine_unless_a_gpu_was_assigned():
    check_gpu_supported(cuda_available=False)
    with pytest.raises(UserError, match="cluster/aws-gpu.yaml"):
        check_gpu_supported(cuda_available=False, gpu_assigned=True)


def test_gpu_check_on_this_machine_does_not_raise_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the injected cases above cover the logic")
    check_gpu_supported()


@pytest.fixture
def k520_node(monkeypatch):
    """torch sees a GRID K520, as on a g2 node where CUDA works at all; every probe is recorded and
    warns the way a driver too old for this CUDA build makes torch warn."""
    import torch

    probes = []

    def probe(name, value):
        def call(*args, **kwargs):
            probes.append(name)
            warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old", stacklevel=2)
            return value
        return call

    for name, value in [("is_available", True), ("device_count", 1), ("get_device_capability", (3, 0)),
                        ("get_arch_list", CU13_ARCHS), ("get_device_name", "GRID K520"),
                        ("current_device", 0), ("init", None)]:
        monkeypatch.setattr(torch.cuda, name, probe(name, value))
    return probes


def test_worker_given_no_gpu_picks_the_cpu_without_touching_cuda(k520_node, caplog):
    """A worker on a node that advertises no GPU (scaling.gpus_per_worker=0): CPU, silently."""
    import torch

    from rsam_dist.config import Config
    from rsam_dist.distributed import World
    from rsam_dist.training import build_state

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = pick_device("auto", gpu_assigned=False)
        state = build_state(Config.model_validate({"model": {"glimpses": 1}}), device, World())
        state.state_dict()  # each epoch's checkpoint must not probe CUDA either
    assert device == torch.device("cpu")
    assert k520_node == [] and [str(w.message) for w in caught] == [] and caplog.records == []


def test_without_the_assignment_the_same_node_would_probe_and_refuse(k520_node):
    """What a worker that asks CUDA instead of Ray does there: it finds the K520 and stops."""
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="GRID K520"):
        warnings.simplefilter("always")
        pick_device("auto")
    assert "is_available" in k520_node and caught


@pytest.mark.filterwarnings("ignore:CUDA initialization")  # the fake driver's, on purpose
def test_worker_explicitly_given_the_k520_fails_fast_with_the_one_line_error(k520_node):
    with pytest.raises(UserError) as caught:
        pick_device("auto", gpu_assigned=True)
    with pytest.raises(UserError) as direct:
        check_gpu_supported(gpu_assigned=True)
    assert str(caught.value) == str(direct.value)  # today's error, word for word
    assert "GRID K520" in str(caught.value) and "cluster/aws-gpu.yaml" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_device_cuda_on_a_worker_given_no_gpu_is_one_line(k520_node):
    with pytest.raises(UserError, match="asks Ray for no GPU") as caught:
        pick_device("cuda", gpu_assigned=False)
    assert "\n" not in str(caught.value) and k520_node == []


@pytest.mark.slow
def test_g2_start_environment_keeps_torch_away_from_the_gpu():
    """The env the g2 start commands give Ray's processes answers torch.cuda.is_available() with
    False without calling into CUDA (here a call would raise), so Ray's own probes are silent too."""
    import torch

    if not torch.backends.cuda.is_built():
        pytest.skip("a CPU-only torch never probes CUDA; requirements.lock pins the CUDA build")
    config = validate_cluster_file(REPO_ROOT / "cluster" / "aws-g2.yaml")
    code = ("import torch\n"
            "def probed(): raise SystemExit('CUDA was probed')\n"
            "torch._C._cuda_getDeviceCount = probed\n"
            "print(torch.cuda.is_available())")
    names = ("CUDA_VISIBLE_DEVICES", "PYTORCH_NVML_BASED_CUDA_CHECK")
    env = {k: v for k, v in os.environ.items() if k not in names}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assignments = re.findall(rf"\b({'|'.join(names)})=(\S*)", config[key][-1])
        assert len(assignments) == 2
        result = subprocess.run([sys.executable, "-c", code], env={**env, **dict(assignments)},
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr[-500:]
    # Control: without that env the same script does call into CUDA.
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CUDA was probed" in result.stderr
