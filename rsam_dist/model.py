"""The Recurrent Soft Attention Model (Ren, RSAM), as the author's code computes it.

Only nn.Modules and the arithmetic of combining glimpses live here: no Ray, no DDP, no I/O.
Layer facts are in shared/RSAM-NOTES.md. Two deliberate differences from the author's script,
neither of which changes the function computed:
  * the down-sample features are computed once per batch, not once per glimpse (the author's
    re-runs give identical features; only BatchNorm's running statistics saw them N times);
  * layers the author registers but never uses are not built.

With the defaults (4 glimpses, hidden 256, down-sample input) the model has 1,340,958 trainable
parameters, the count of the layers the author's forward uses.

One option goes beyond the paper: `batchnorm_per_glimpse` keeps the running statistics of the
BatchNorms that run once per glimpse separately for each glimpse (same parameters).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rsam_dist.config import ModelConfig

IMAGE_SIZE = 32
NUM_CLASSES = 10
GLIMPSE_FEATURES = 16 * 4 * 4  # the glimpse network's flat output


class PerGlimpseBatchNorm(nn.Module):
    """BatchNorm with running statistics of its own for each glimpse and one shared scale and shift.

    A BatchNorm shared across glimpses normalises each glimpse with that glimpse's batch statistics
    in training, but with one running average pooled over all glimpses in evaluation. Keeping the
    statistics per glimpse (recurrent BatchNorm, Cooijmans et al. 2016) makes evaluation normalise
    as training did. The scale and shift stay shared, so the parameter count does not change.
    """

    def __init__(self, num_features: int, glimpses: int, dims: int):
        super().__init__()
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
        self.norms = nn.ModuleList(norm(num_features, affine=False) for _ in range(glimpses))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, glimpse: int) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over the batch and spatial dimensions
        return self.norms[glimpse](x) * self.weight.view(shape) + self.bias.view(shape)


def batchnorm(num_features: int, dims: int, per_glimpse: int | None = None) -> nn.Module:
    """A BatchNorm shared by every call, or with statistics for each of `per_glimpse` glimpses."""
    if per_glimpse is not None:
        return PerGlimpseBatchNorm(num_features, per_glimpse, dims)
    return nn.BatchNorm1d(num_features) if dims == 1 else nn.BatchNorm2d(num_features)


def run_at_glimpse(layers: Iterable[nn.Module], x: torch.Tensor, glimpse: int) -> torch.Tensor:
    """The layers applied in order (Sequentials entered), passing the glimpse index to the
    per-glimpse BatchNorms among them."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            x = run_at_glimpse(layer, x, glimpse)
        elif isinstance(layer, PerGlimpseBatchNorm):
            x = layer(x, glimpse)
        else:
            x = layer(x)
    return x


def conv_bn_pool_relu(
    in_channels: int, out_channels: int, kernel: int, per_glimpse: int | None = None
) -> nn.Sequential:
    """conv -> BatchNorm -> maxpool 2 -> ReLU, the block both CNNs are made of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        batchnorm(out_channels, 2, per_glimpse),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )


class DownsampleNet(nn.Module):
    """3x32x32 image -> (hidden/64)x8x8 features, flattened to `hidden` values for C0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_pool_relu(3, 16, 5),
            conv_bn_pool_relu(16, 32, 5),
            nn.Conv2d(32, hidden_size // 64, 1),  # the paper's 1x1 "down-sample" conv: no BN, no ReLU
            nn.Flatten(),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(image)


class FlatAttentionInput(nn.Module):
    """The ablation's input to C0: one fully-connected layer on the flat image (Xu et al.)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, hidden_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(image.flatten(1))


class MaskDecoder(nn.Module):
    """C0's hidden state -> a non-negative 32x32 mask: ReLU(BN(Linear(h))).

    `per_glimpse`: the number of glimpses to keep BatchNorm statistics for (None: one shared set)."""

    def __init__(self, hidden_size: int, per_glimpse: int | None = None):
        super().__init__()
        self.fc = nn.Linear(hidden_size, IMAGE_SIZE * IMAGE_SIZE)
        self.bn = batchnorm(IMAGE_SIZE * IMAGE_SIZE, 1, per_glimpse)

    def forward(self, hidden: torch.Tensor, glimpse: int = 0) -> torch.Tensor:
        return F.relu(run_at_glimpse([self.fc, self.bn], hidden, glimpse)).view(-1, IMAGE_SIZE, IMAGE_SIZE)


class GlimpseNet(nn.Module):
    """Masked 3x32x32 image -> 16x4x4 = 256 features for C1.

    `per_glimpse`: the number of glimpses to keep BatchNorm statistics for (None: one shared set)."""

    def __init__(self, per_glimpse: int | None = None):
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_pool_relu(3, 8, 5, per_glimpse),
            conv_bn_pool_relu(8, 16, 5, per_glimpse),
            conv_bn_pool_relu(16, 16, 3, per_glimpse),
            nn.Flatten(),
        )

    def forward(self, masked_image: torch.Tensor, glimpse: int = 0) -> torch.Tensor:
        return run_at_glimpse(self.layers, masked_image, glimpse)


class RSAMOutput(NamedTuple):  # a tuple, so DDP can traverse it
    logits: torch.Tensor
    """Per-glimpse class scores, shape (glimpses, batch, 10)."""
    masks: torch.Tensor
    """Per-glimpse attention masks, shape (glimpses, batch, 32, 32), non-negative."""


class RSAM(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        hidden = config.hidden_size
        self.attention_input = (
            DownsampleNet(hidden) if config.attention_input == "downsample" else FlatAttentionInput(hidden)
        )
        self.context_lstm = nn.LSTMCell(hidden, hidden)  # C0: features and feedback share its weights
        # The down-sample network runs once per batch; these two run once per glimpse.
        per_glimpse = config.glimpses if config.batchnorm_per_glimpse else None
        self.mask_decoder = MaskDecoder(hidden, per_glimpse)
        self.glimpse_net = GlimpseNet(per_glimpse)
        self.glimpse_lstm = nn.LSTMCell(GLIMPSE_FEATURES, hidden)  # C1
        self.classifier = nn.Linear(hidden, NUM_CLASSES)  # shared by every glimpse
        if config.batchnorm_init == "uniform":
            for module in self.modules():
                if isinstance(module, (nn.modules.batchnorm._BatchNorm, PerGlimpseBatchNorm)) and (
                    module.weight is not None  # a PerGlimpseBatchNorm's inner norms have no scale
                ):
                    nn.init.uniform_(module.weight)  # what PyTorch 0.x did, so the author's runs too

    def forward(self, image: torch.Tensor, features: torch.Tensor | None = None) -> RSAMOutput:
        """`image`: normalised (batch, 3, 32, 32). `features` lets a caller pass precomputed
        down-sample features (tests use it to show computing them once changes nothing)."""
        image = image.detach()  # the author's code: no gradient flows into the input
        if features is None:
            features = self.attention_input(image)
        batch = image.shape[0]
        zeros = image.new_zeros(batch, self.config.hidden_size)
        context, glimpse_state = (zeros, zeros), (zeros, zeros)
        logits, masks = [], []
        for step in range(self.config.glimpses):
            context = self.context_lstm(features, context)
            mask = self.mask_decoder(context[0], step)
            glimpse = mask.unsqueeze(1) * image  # one mask on all three channels
            glimpse_state = self.glimpse_lstm(self.glimpse_net(glimpse, step), glimpse_state)
            logits.append(self.classifier(glimpse_state[0]))
            masks.append(mask)
            last = step == self.config.glimpses - 1
            if self.config.feedback and not last:  # the feedback after the last glimpse feeds nothing
                context = self.context_lstm(glimpse_state[0], context)
        return RSAMOutput(logits=torch.stack(logits), masks=torch.stack(masks))


def glimpse_log_probs(logits: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """log-softmax of each glimpse's logits, after the author's optional ReLU."""
    if config.relu_logits:
        logits = F.relu(logits)
    return F.log_softmax(logits, dim=-1)


def rsam_loss(output: RSAMOutput, labels: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Sum over glimpses of the mean cross-entropy (or the last glimpse's only)."""
    log_probs = glimpse_log_probs(output.logits, config)
    if config.loss == "last_glimpse":
        log_probs = log_probs[-1:]
    per_glimpse = [F.nll_loss(lp, labels) for lp in log_probs]
    return torch.stack(per_glimpse).sum()


def combined_scores(output: RSAMOutput, config: ModelConfig) -> torch.Tensor:
    """The model's prediction scores (batch, 10): mean softmax (paper) or summed log-softmax (code)."""
    log_probs = glimpse_log_probs(output.logits, config)
    if config.combine == "sum_log_softmax":
        return log_probs.sum(0)
    return log_probs.exp().mean(0)


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
