"""Training losses that went wrong: non-finite ones stop the run, diverged ones are reported.

A NaN or infinite loss never recovers, so the run stops within LOSS_CHECK_STEPS steps with one
line (exit 2: the fix, usually a lower optim.lr, is the user's). On Ray Train the workers return
the reason instead of raising it (rsam_dist.ray_train), so Ray does not retry the run from its
last checkpoint into the same NaN. A finite loss more than DIVERGED_FACTOR times the first
epoch's, or than a uniform guess's, is reported every epoch it lasts, and such an epoch is never
saved as `best`.
"""

from __future__ import annotations

import math
import sys

import torch

from rsam_dist.config import ModelConfig
from rsam_dist.distributed import World
from rsam_dist.errors import UserError
from rsam_dist.model import NUM_CLASSES
from rsam_dist.runs import RunDir, read_metrics

LOSS_CHECK_STEPS = 8
"""Steps between checks of the summed loss: each check syncs the device with the host (and
all-reduces one number over the ranks), which every step would slow a GPU down."""
DIVERGED_FACTOR = 100.0
"""An epoch whose loss exceeds this many times the reference (the smaller of the first epoch's
loss and a uniform guess's) has diverged."""


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; continuing or retrying cannot help."""


def stop_if_not_finite(loss_sum: torch.Tensor, world: World, steps: int, optimizer: torch.optim.Optimizer) -> None:
    """Raise NonFiniteLoss on every rank alike if any rank's summed loss is NaN or infinite.

    The sum turns non-finite with the first bad step and stays so (the loss is never negative),
    so checking it every few steps misses nothing. Every rank must call this at the same steps.
    """
    total = world.sum(loss_sum.detach().reshape(1))
    if not bool(torch.isfinite(total).all()):
        lr = optimizer.param_groups[0]["lr"]
        raise NonFiniteLoss(f"the training loss became {total.item()} within the epoch's first {steps} steps "
                            f"(lr {lr:g}): lower optim.lr; the checkpoints of earlier epochs are kept")


def uniform_guess_loss(model: ModelConfig) -> float:
    """The loss of a model that gives every class the same probability: ln 10 per glimpse counted."""
    return math.log(NUM_CLASSES) * (model.glimpses if model.loss == "all_glimpses" else 1)


class DivergenceWatch:
    """Compares each epoch's train_loss with the run's first epoch's and a uniform guess's (rank 0)."""

    def __init__(self, uniform_loss: float, first_loss: float | None = None):
        self.uniform_loss = uniform_loss
        self.first_loss = first_loss

    @classmethod
    def for_run(cls, run: RunDir, model: ModelConfig) -> DivergenceWatch:
        """A watch that remembers the first epoch of a resumed run (from its metrics.jsonl)."""
        earlier = read_metrics(run)
        return cls(uniform_guess_loss(model), earlier[0].get("train_loss") if earlier else None)

    def diverged(self, metrics: dict[str, float]) -> bool:
        """Whether this epoch's loss has diverged; if so, say so in one line on stderr."""
        loss = metrics["train_loss"]
        if self.first_loss is None:
            self.first_loss = loss
        reference = max(min(self.first_loss, self.uniform_loss), 1e-6)  # a first epoch may diverge already
        if loss <= DIVERGED_FACTOR * reference:
            return False
        print(f"rsam-dist: warning: epoch {int(metrics['epoch'])} diverged: train loss {loss:.3g} is "
              f"{loss / reference:.2g}x {'a uniform guess' if reference < self.first_loss else 'the first epoch'}"
              f"'s ({reference:.3g}); lower optim.lr (this epoch is not saved as best)", file=sys.stderr, flush=True)
        return True
