"""The GPU check: a GPU below the installed torch's compute capability floor is refused in one
line that names a cluster file that works; current GPUs and CPU-only machines pass."""

from __future__ import annotations

import pytest

from rsam_dist.errors import UserError
from rsam_dist.gpu_check import check_gpu_supported, min_supported_capability

# torch 2.14's CUDA 13 wheels (what requirements.lock pins)
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
