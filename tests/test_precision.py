"""`train.precision`: what auto picks, that autocast reaches the model, fp16's loss scaling."""

from __future__ import annotations

import io
import math

import pytest
import torch

import rsam_dist.precision as precision_module
from rsam_dist.config import ModelConfig, load_config
from rsam_dist.errors import UserError
from rsam_dist.model import RSAM
from rsam_dist.precision import Precision
from rsam_dist.training import fit

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_takes_bf16_only_where_it_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "native_bf16", lambda device: native)
    chosen = Precision.resolve("auto", CPU)
    assert chosen.name == expected
    assert chosen.describe() == f"{expected} (auto)"
    assert Precision.resolve("fp16", CPU).describe() == "fp16"  # asked for: taken as is


def test_precision_is_checked_by_the_config():
    assert load_config().train.precision == "auto"
    with pytest.raises(UserError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])


@pytest.mark.parametrize(("name", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_autocast_reaches_the_model(normalised_images, name, dtype):
    model = RSAM(ModelConfig(glimpses=1))
    with Precision(name, "cpu").autocast():
        output = model(normalised_images)
    assert output.logits.dtype == dtype
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())  # weights stay fp32


def _tiny(*overrides: str):
    return load_config(None, ["data.name=digits", "train.device=cpu", "data.limit_train=64", "data.limit_test=32",
                              "optim.batch_size=32", "model.glimpses=1", "train.mask_images=0", *overrides])


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_training_runs_and_resumes(name):
    seen = []
    state = fit(_tiny("train.epochs=1", f"train.precision={name}"), lambda result, _: seen.append(result.metrics))
    assert math.isfinite(seen[0]["train_loss"]) and 0.0 <= seen[0]["test_top1"] <= 1.0
    assert (state.scaler is not None) == (name == "fp16")  # loss scaling for fp16 only
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=False)
    if name == "fp16":
        assert checkpoint["scaler"]["scale"] == state.scaler.get_scale()
        checkpoint["scaler"]["scale"] = 1024.0  # a resumed run continues from the stored scale
        resumed = fit(_tiny("train.epochs=1", f"train.precision={name}"), resume_from=checkpoint)
        assert resumed.scaler.get_scale() == 1024.0
    else:
        assert checkpoint["scaler"] is None
