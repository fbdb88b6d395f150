"""`train.precision`: the arithmetic the train step and evaluation run in; and the memory layout.

`auto` takes bf16 only where the device computes it natively and fast, and fp32 elsewhere:
  * CUDA GPUs with bf16 support (Ampere and newer);
  * CPUs with AVX-512 BF16 or AMX tiles (Cooper Lake, Sapphire Rapids, Zen 4 and newer).
On an AVX2 CPU torch emulates bf16 and an RSAM step ran ~9x slower than fp32 (benchmarks/),
so `auto` stays fp32 there. fp16 trains with a GradScaler (loss scaling); bf16 needs none.
Parameters, optimizer state and the loss stay fp32 (torch.autocast), so checkpoints are the same
whatever the precision.

    precision = Precision.resolve("auto", torch.device("cpu"))
    with precision.autocast():
        loss = ...

The layout: on CPUs the model's conv weights are channels_last, which oneDNN's convolutions run
faster (here 1.8x in evaluation, up to 1.25x in a train step, inputs left as they are). On GPUs the
layout stays NCHW until benchmarks/gpu.sh has measured it there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix work in hardware (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


@dataclass(frozen=True)
class Precision:
    name: str
    """fp32, bf16 or fp16 (auto is settled by `resolve`)."""
    device_type: str
    requested: str = ""
    """What the config asked for (auto, or the same as name)."""

    @classmethod
    def resolve(cls, requested: str, device: torch.device) -> Precision:
        name = requested
        if requested == "auto":
            name = "bf16" if native_bf16(device) else "fp32"
        return cls(name, device.type, requested)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass (and loss) in this precision; a no-op for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Loss scaling for fp16, whose narrow exponent lets small gradients underflow; else None."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None

    def describe(self) -> str:
        return self.name if self.requested in ("", self.name) else f"{self.name} ({self.requested})"


FP32 = Precision("fp32", "cpu")
"""Plain fp32: the default of code that is handed no precision (tests, tools)."""


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the model's 4-d weights on `device` (see the module docstring)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format
