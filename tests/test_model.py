"""The RSAM module: shapes, parameter count, masks, gradients, feedback, ablation, and that
computing the down-sample features once is the same model as recomputing them per glimpse."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsam_dist.config import ModelConfig
from rsam_dist.model import (
    RSAM,
    DownsampleNet,
    FlatAttentionInput,
    RSAMOutput,
    combined_scores,
    count_trainable_parameters,
    rsam_loss,
)


def _labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % 10


@pytest.mark.parametrize("glimpses", range(1, 9))
def test_output_shapes(glimpses, normalised_images):
    torch.manual_seed(0)
    model = RSAM(ModelConfig(glimpses=glimpses))
    output = model(normalised_images)
    batch = normalised_images.shape[0]
    assert isinstance(output, RSAMOutput)
    assert output.logits.shape == (glimpses, batch, 10)
    assert output.masks.shape == (glimpses, batch, 32, 32)


def _params(*modules: nn.Module) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def test_faithful_parameter_count():
    model = RSAM(ModelConfig())
    assert count_trainable_parameters(model) == 1_340_958

    # Counted by hand, layer by layer, from the table in RSAM-NOTES.md: weights + biases of each
    # conv / linear, 2 * channels (scale and shift) for each BatchNorm, and for an LSTMCell(i, h)
    # 4h * (i + h) weights plus two 4h bias vectors (PyTorch keeps bias_ih and bias_hh).
    downsample = (
        (3 * 16 * 5 * 5 + 16) + 2 * 16  # conv 3->16 5x5 + BatchNorm2d(16)
        + (16 * 32 * 5 * 5 + 32) + 2 * 32  # conv 16->32 5x5 + BatchNorm2d(32)
        + (32 * 4 * 1 * 1 + 4)  # conv 32->4 1x1 (no BN)
    )
    lstm_256 = 4 * 256 * (256 + 256) + 2 * 4 * 256
    mask_decoder = (256 * 1024 + 1024) + 2 * 1024  # Linear 256->1024 + BatchNorm1d(1024)
    glimpse_net = (
        (3 * 8 * 5 * 5 + 8) + 2 * 8  # conv 3->8 5x5 + BN
        + (8 * 16 * 5 * 5 + 16) + 2 * 16  # conv 8->16 5x5 + BN
        + (16 * 16 * 3 * 3 + 16) + 2 * 16  # conv 16->16 3x3 + BN
    )
    classifier = 256 * 10 + 10
    assert (downsample, lstm_256, mask_decoder, glimpse_net, classifier) == (
        14_276, 526_336, 265_216, 6_224, 2_570
    )
    assert downsample + lstm_256 + mask_decoder + glimpse_net + lstm_256 + classifier == 1_340_958

    # ... and the model's own modules hold exactly these counts (so no unused layer is registered).
    assert _params(model.attention_input) == downsample
    assert _params(model.context_lstm) == lstm_256
    assert _params(model.mask_decoder) == mask_decoder
    assert _params(model.glimpse_net) == glimpse_net
    assert _params(model.glimpse_lstm) == lstm_256
    assert _params(model.classifier) == classifier


def test_fc_ablation_parameter_count():
    model = RSAM(ModelConfig(attention_input="fc"))
    flat_input = 3 * 32 * 32 * 256 + 256  # Linear 3072->256 instead of the down-sample network
    assert flat_input == 786_688
    assert count_trainable_parameters(model) == 1_340_958 - 14_276 + flat_input == 2_113_370


def test_masks_are_non_negative_and_sparse(normalised_images):
    torch.manual_seed(0)
    model = RSAM(ModelConfig()).train()
    masks = model(normalised_images).masks
    assert (masks >= 0).all()
    assert (masks == 0).any()
    assert (masks > 0).any()


def test_no_gradient_reaches_the_input(normalised_images):
    torch.manual_seed(0)
    model = RSAM(ModelConfig()).train()
    image = normalised_images.clone().requires_grad_(True)
    loss = rsam_loss(model(image), _labels(image.shape[0]), model.config)
    loss.backward()
    assert image.grad is None
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("glimpses", [1, 4, 6])
@pytest.mark.parametrize("feedback", [True, False])
def test_feedback_steps_of_the_context_lstm(glimpses, feedback, normalised_images):
    torch.manual_seed(0)
    model = RSAM(ModelConfig(glimpses=glimpses, feedback=feedback))
    calls = []
    handle = model.context_lstm.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    try:
        model(normalised_images)
    finally:
        handle.remove()
    # With feedback C0 steps on features and on C1's state each glimpse, except that the feedback
    # after the last glimpse (which would feed nothing) is skipped.
    assert len(calls) == (2 * glimpses - 1 if feedback else glimpses)


def test_fc_attention_input_replaces_the_downsample_network(normalised_images):
    model = RSAM(ModelConfig(attention_input="fc"))
    assert type(model.attention_input) is FlatAttentionInput
    assert not any(isinstance(module, DownsampleNet) for module in model.modules())
    assert model(normalised_images).logits.shape == (4, normalised_images.shape[0], 10)
    default = RSAM(ModelConfig())
    assert type(default.attention_input) is DownsampleNet
    assert not any(isinstance(module, FlatAttentionInput) for module in default.modules())


def reference_forward(model: RSAM, image: torch.Tensor) -> RSAMOutput:
    """The author's loop, written out here from RSAM-NOTES.md with the model's submodules: the
    down-sample network is re-run on the image at every glimpse."""
    config = model.config
    image = image.detach()
    zeros = image.new_zeros(image.shape[0], config.hidden_size)
    context, glimpse_state = (zeros, zeros), (zeros, zeros)
    logits, masks = [], []
    for step in range(config.glimpses):
        features = model.attention_input(image)  # recomputed per glimpse
        context = model.context_lstm(features, context)
        mask = model.mask_decoder(context[0])
        glimpse = mask.unsqueeze(1).expand_as(image) * image
        glimpse_state = model.glimpse_lstm(model.glimpse_net(glimpse), glimpse_state)
        logits.append(model.classifier(glimpse_state[0]))
        masks.append(mask)
        if config.feedback and step < config.glimpses - 1:
            context = model.context_lstm(glimpse_state[0], context)
    return RSAMOutput(torch.stack(logits), torch.stack(masks))


def _trained_a_little(config: ModelConfig, images: torch.Tensor) -> RSAM:
    """A model whose BatchNorm running statistics are not the initial ones, so eval mode is not trivial."""
    torch.manual_seed(0)
    model = RSAM(config).train()
    with torch.no_grad():
        model(images)
    return model.eval()


@pytest.mark.parametrize("feedback", [True, False])
def test_features_once_equals_features_per_glimpse_eval(feedback, normalised_images):
    model = _trained_a_little(ModelConfig(feedback=feedback), normalised_images)
    with torch.no_grad():
        once = model(normalised_images)
        passed = model(normalised_images, features=model.attention_input(normalised_images))
        reference = reference_forward(model, normalised_images)
    for output in (once, passed):
        assert torch.allclose(output.logits, reference.logits, atol=1e-6)
        assert torch.allclose(output.masks, reference.masks, atol=1e-6)
    assert not torch.allclose(once.logits[0], once.logits[-1])  # the glimpses do differ


def test_features_once_equals_features_per_glimpse_gradients(normalised_images):
    # In float64, so that the two summation orders agree far below any real difference.
    torch.manual_seed(0)
    once = RSAM(ModelConfig()).double().train()
    per_glimpse = copy.deepcopy(once)
    images = normalised_images.double()
    labels = _labels(images.shape[0])
    rsam_loss(once(images), labels, once.config).backward()
    rsam_loss(reference_forward(per_glimpse, images), labels, per_glimpse.config).backward()
    grads = dict(per_glimpse.named_parameters())
    for name, parameter in once.named_parameters():
        assert parameter.grad.abs().sum() > 0, name
        assert torch.allclose(parameter.grad, grads[name].grad, atol=1e-10, rtol=1e-7), name
    # The reference really re-ran the down-sample network: its BatchNorms saw the batch 4 times.
    first_bn = [m for m in once.attention_input.modules() if isinstance(m, nn.BatchNorm2d)][0]
    first_bn_ref = [m for m in per_glimpse.attention_input.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert first_bn.num_batches_tracked.item() == 1
    assert first_bn_ref.num_batches_tracked.item() == 4


# ---------------------------------------------------------------------------------------------
# The author's-code options: each changes what is computed, to the value written out by hand here


def _two_glimpse_logits() -> torch.Tensor:
    """(2 glimpses, 2 images, 10 classes) with negative logits, so that ReLU changes them."""
    generator = torch.Generator().manual_seed(5)
    return torch.randn(2, 2, 10, generator=generator) * 3


def _output(logits: torch.Tensor) -> RSAMOutput:
    return RSAMOutput(logits, torch.zeros(*logits.shape[:2], 32, 32))


def test_default_loss_sums_every_glimpse_cross_entropy():
    logits, labels = _two_glimpse_logits(), torch.tensor([3, 7])
    expected = sum(F.cross_entropy(logits[g], labels) for g in range(2))
    assert rsam_loss(_output(logits), labels, ModelConfig(glimpses=2)) == pytest.approx(expected.item(), rel=1e-6)


def test_last_glimpse_loss_is_the_last_glimpse_cross_entropy_only():
    logits, labels = _two_glimpse_logits().requires_grad_(True), torch.tensor([3, 7])
    loss = rsam_loss(_output(logits), labels, ModelConfig(glimpses=2, loss="last_glimpse"))
    assert loss.item() == pytest.approx(F.cross_entropy(logits[1], labels).item(), rel=1e-6)
    assert loss.item() < rsam_loss(_output(logits), labels, ModelConfig(glimpses=2)).item() - 0.5
    loss.backward()
    assert torch.count_nonzero(logits.grad[0]) == 0 and torch.count_nonzero(logits.grad[1]) > 0


def test_relu_logits_applies_relu_before_the_softmax():
    logits, labels = _two_glimpse_logits(), torch.tensor([3, 7])
    assert (logits < 0).any()
    config = ModelConfig(glimpses=2, relu_logits=True)
    expected = sum(F.cross_entropy(F.relu(logits[g]), labels) for g in range(2))
    assert rsam_loss(_output(logits), labels, config) == pytest.approx(expected.item(), rel=1e-6)
    assert abs(expected - rsam_loss(_output(logits), labels, ModelConfig(glimpses=2))) > 0.1
    scores = combined_scores(_output(logits), config)
    assert torch.allclose(scores, F.softmax(F.relu(logits), -1).mean(0), atol=1e-7)


def test_mean_softmax_and_sum_log_softmax_vote_differently():
    # Image 0: glimpse 1 is sure of class 0 (0.9, class 1 0.1), glimpse 2 prefers class 1 (0.6) and
    # nearly rules class 0 out (0.001). Mean of softmaxes picks 0 (0.4505 vs 0.35); the sum of
    # log-softmaxes picks 1 (log 0.1 + log 0.6 = -2.81 vs log 0.9 + log 0.001 = -7.0).
    probabilities = torch.full((2, 1, 10), 1e-9)
    probabilities[0, 0, :2] = torch.tensor([0.9, 0.1])
    probabilities[1, 0, :3] = torch.tensor([0.001, 0.6, 0.399])
    output = _output(probabilities.log())
    mean = combined_scores(output, ModelConfig(glimpses=2))
    summed = combined_scores(output, ModelConfig(glimpses=2, combine="sum_log_softmax"))
    assert mean[0, :2].tolist() == pytest.approx([0.4505, 0.35], abs=1e-6)
    assert summed[0, :2].tolist() == pytest.approx([math.log(0.9 * 0.001), math.log(0.1 * 0.6)], abs=1e-5)
    assert mean.argmax(-1).item() == 0 and summed.argmax(-1).item() == 1


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def test_batchnorm_init_uniform_draws_every_scale_from_u01():
    torch.manual_seed(0)
    default = _batchnorms(RSAM(ModelConfig()))
    torch.manual_seed(0)
    uniform = _batchnorms(RSAM(ModelConfig(batchnorm_init="uniform")))
    assert len(default) == len(uniform) == 6  # 2 down-sample, 1 mask decoder, 3 glimpse network
    for plain, drawn in zip(default, uniform, strict=True):
        assert torch.equal(plain.weight, torch.ones_like(plain.weight))
        assert drawn.weight.min() >= 0 and drawn.weight.max() < 1
        assert drawn.weight.unique().numel() == drawn.weight.numel()  # drawn, not a constant
        assert torch.equal(drawn.bias, torch.zeros_like(drawn.bias))  # shifts keep PyTorch's zeros
    scales = torch.cat([module.weight.detach() for module in uniform])
    assert scales.mean().item() == pytest.approx(0.5, abs=0.05)  # 1,112 draws of U(0, 1)
