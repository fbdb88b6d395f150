"""Fail fast on a GPU that this PyTorch build cannot run, instead of a CUDA error mid-epoch.

The paper trained on AWS g2.2xlarge nodes, whose NVIDIA GRID K520 has compute capability 3.0.
Current PyTorch CUDA wheels ship kernels for sm_75 and newer only (`torch.cuda.get_arch_list()`),
and current NVIDIA drivers no longer load on Kepler GPUs at all, so such a worker either sees no
CUDA device or one it has no kernels for. Either way the run stops here with one line that says
which GPU, why, and which cluster config works.

Nodes that carry such a GPU can still train on their CPUs: cluster/aws-g2.yaml starts Ray there
with `--num-gpus=0` and node `resources` of GPU 0, so nothing is ever given the GPU. For cluster
files, `check_unsupported_gpus_hidden` holds every such node type to that, and `settle_gpus`
plans a job against the GPUs a file declares (before any node is up, Ray itself sees none).

    python -m rsam_dist.gpu_check          # prints what this machine has, exits 2 if unsupported
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsam_dist.errors import UserError

WORKING_CONFIG = "use cluster/aws-gpu.yaml (g5/g6 instances)"
UNSUPPORTED_GPU_INSTANCES = {"g2.": "GRID K520 (compute capability 3.0)"}
"""AWS instance families (InstanceType prefixes) whose GPU is below this PyTorch's sm_75 floor."""
_SM_ARCH = re.compile(r"^sm_(\d+)(\d)[a-z]?$")  # sm_75, sm_90a, sm_100, sm_120


def min_supported_capability(arch_list: Sequence[str]) -> tuple[int, int] | None:
    """The lowest (major, minor) among the `sm_XY` entries of `torch.cuda.get_arch_list()`.

    `compute_XY` (PTX) entries are ignored: PTX only JIT-compiles for newer GPUs, never older.
    None when the list names no real architecture (a CPU-only build).
    """
    found = [(int(m[1]), int(m[2])) for arch in arch_list if (m := _SM_ARCH.match(arch))]
    return min(found) if found else None


def check_gpu_supported(
    capability: tuple[int, int] | None = None,
    arch_list: Sequence[str] | None = None,
    name: str | None = None,
    cuda_available: bool | None = None,
    gpu_assigned: bool = False,
) -> None:
    """Raise UserError if this process's GPU cannot run this PyTorch build.

    Every argument defaults to what torch reports (so tests inject them and need no GPU):
    `capability` = torch.cuda.get_device_capability(), `arch_list` = torch.cuda.get_arch_list(),
    `name` = torch.cuda.get_device_name(), `cuda_available` = torch.cuda.is_available().
    `gpu_assigned`: the caller was given a GPU (Ray set scaling.gpus_per_worker > 0); then a
    missing CUDA device is an error too, which is what a g2 node with a current driver looks like.
    """
    if cuda_available is None or (cuda_available and None in (capability, arch_list, name)):
        import torch

        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        if cuda_available:
            capability = capability or torch.cuda.get_device_capability()
            arch_list = arch_list if arch_list is not None else torch.cuda.get_arch_list()
            name = name or torch.cuda.get_device_name()
    if not cuda_available:
        if gpu_assigned:
            raise UserError(
                "this worker was given a GPU but PyTorch sees no CUDA device (no NVIDIA driver that "
                "supports it, e.g. the paper's GRID K520 on g2 nodes); " + WORKING_CONFIG
            )
        return
    minimum = min_supported_capability(arch_list or [])
    if minimum is None or tuple(capability) >= minimum:
        return
    major, minor = capability
    raise UserError(
        f"GPU {name} has compute capability {major}.{minor} but this PyTorch build runs on "
        f"{minimum[0]}.{minimum[1]} and newer ({', '.join(arch_list)}); {WORKING_CONFIG}"
    )


def unsupported_gpu(instance_type: str) -> str | None:
    """The GPU of `instance_type` if this PyTorch cannot run it (g2.2xlarge: the GRID K520), else None."""
    return next((gpu for prefix, gpu in UNSUPPORTED_GPU_INSTANCES.items() if instance_type.startswith(prefix)),
                None)


def check_unsupported_gpus_hidden(path: str | Path, config: dict[str, Any]) -> None:
    """Every node type with an unsupported GPU declares GPU 0, so Ray plans CPU work on it.

    Left to the instance type, Ray would count the K520 and place GPU trials there, each of which
    would then stop with the error above.
    """
    for name, node_type in (config.get("available_node_types") or {}).items():
        instance = str((node_type.get("node_config") or {}).get("InstanceType", ""))
        gpu = unsupported_gpu(instance)
        if gpu and (node_type.get("resources") or {}).get("GPU") != 0:
            raise UserError(
                f"{path}: node type {name} ({instance}) would offer Ray its {gpu}, which this PyTorch "
                'cannot run: give it resources {"CPU": N, "GPU": 0} (and ray start --num-gpus=0) to '
                f"train on its CPUs, or {WORKING_CONFIG}"
            )


def declared_cluster_gpus(config: dict[str, Any]) -> float | None:
    """GPUs a prepared cluster config offers Ray at full size; None if any node type leaves its
    GPU count to the instance type (then only the running cluster can tell)."""
    total = 0.0
    for name, node_type in (config.get("available_node_types") or {}).items():
        resources = node_type.get("resources") or {}
        if "GPU" not in resources:
            return None
        count = 1 if name == config.get("head_node_type") else node_type.get("max_workers", 0)
        total += resources["GPU"] * count
    return total if config.get("available_node_types") else None


def settle_gpus(requested: float | str, cluster_gpus: float | None, cluster: str | None, key: str) -> float | str:
    """GPUs per worker for a job on a cluster that declares `cluster_gpus`: `auto` becomes 0 where it
    declares none; an explicit GPU there fails now, in one line, instead of waiting forever for one."""
    if cluster_gpus != 0:
        return requested
    if requested == "auto":
        return 0.0
    if requested:
        raise UserError(
            f"{key}={requested:g} but {cluster} offers Ray no GPU (its nodes train on CPUs): drop {key} "
            f"to train there, or {WORKING_CONFIG}"
        )
    return requested


def main() -> int:
    import torch

    try:
        check_gpu_supported()
    except UserError as err:
        print(f"rsam-dist: error: {err}", file=sys.stderr)
        return 2
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        print(f"{torch.cuda.get_device_name()} (compute capability {major}.{minor}) is supported "
              f"by torch {torch.__version__}")
    else:
        print(f"no CUDA device; torch {torch.__version__} will train on CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
