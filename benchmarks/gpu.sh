#!/usr/bin/env bash
# RSAM on one GPU, torch only (no Ray), in under 5 minutes: step and epoch times on a
# CIFAR-10-size synthetic set (50,000/10,000) at 4 glimpses for fp32, bf16, compiled and graphed
# (CUDA graphs), evaluation batch sizes, and 1/2/4/8 packed trials sharing the GPU.
#
#   bash benchmarks/gpu.sh                 # from the repository root, on the GPU machine
#   bash benchmarks/gpu.sh --no-compile    # extra arguments go to benchmarks/gpu_bench.py
#
# It needs torch, pydantic and pyyaml. A machine without pydantic (the lent GPU machines have
# torch but neither pydantic nor Ray) can take wheels carried in .whl/ (see the device notes):
# they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import pydantic, yaml" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu.sh: needs pydantic and pyyaml (pip install pydantic pyyaml, or carry their wheels in .whl/)" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec timeout 300 "$PYTHON" benchmarks/gpu_bench.py "$@"
