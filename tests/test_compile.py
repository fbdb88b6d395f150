"""`train.compile`: fit trains and evaluates through torch.compile, and computes the same numbers.

Dynamo runs for real; its backend is "eager" here, because Inductor's C++ compile of RSAM takes
minutes on 2 CPU cores (benchmarks/gpu.sh times the real thing on a GPU).
"""

from __future__ import annotations

import functools

import pytest
import torch

from rsam_dist.config import load_config
from rsam_dist.training import fit


def test_compiled_fit_matches_eager(monkeypatch):
    compiled = []
    original = torch.compile

    def compile_eagerly(model, **kwargs):
        compiled.append(type(model).__name__)
        return original(model, **{**kwargs, "backend": "eager"})

    overrides = ["data.name=digits", "train.device=cpu", "data.limit_train=64", "data.limit_test=32",
                 "optim.batch_size=32", "model.glimpses=1", "train.mask_images=0", "train.epochs=1"]
    eager, graphed = [], []
    fit(load_config(None, overrides), lambda result, _: eager.append(result.metrics))
    monkeypatch.setattr(torch, "compile", functools.wraps(original)(compile_eagerly))
    fit(load_config(None, [*overrides, "train.compile=true"]), lambda result, _: graphed.append(result.metrics))
    assert compiled == ["RSAM", "RSAM"]  # the training network and the evaluated model
    assert graphed[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-4)
    assert graphed[0]["test_top1"] == pytest.approx(eager[0]["test_top1"], abs=1 / 32)
