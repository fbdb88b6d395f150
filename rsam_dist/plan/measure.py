"""A short measurement of the real training step on this machine, for `rsam-dist plan`.

What one SGD step and one evaluation pass of RSAM cost depends on the model's shape, the batch
each worker takes, the device and the threads the worker may use; nothing else in the config
changes it (lr, seeds, weight decay do not). So a sweep's trials share a few `StepSetting`s and
each is timed once: a warm-up step on a tiny batch (allocations, optimizer state), then the real
batch until a time budget is spent (at least two steps), the median kept. Several settings are
timed in turns, so that the load of a shared machine hits them alike.

    from rsam_dist.plan.measure import StepSetting, measure_step
    measure_step(StepSetting(glimpses=4, hidden_size=256, feedback=True, attention_input="downsample",
                             batch=128, threads=1, device="cpu"))
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from rsam_dist.config import Config, ModelConfig

MIN_TIMED_STEPS = 2
WARMUP_BATCH = 2


@dataclass(frozen=True, order=True)
class StepSetting:
    """Everything the cost of a training step depends on."""

    glimpses: int
    hidden_size: int
    feedback: bool
    attention_input: str
    batch: int
    """Images per worker per step (the global batch over the workers)."""
    threads: int
    """Threads the worker computes with: Ray sets OMP_NUM_THREADS to its cpus_per_worker."""
    device: str
    """cpu or cuda."""

    @classmethod
    def of(cls, config: Config, device: str) -> StepSetting:
        model, scaling = config.model, config.scaling
        return cls(glimpses=model.glimpses, hidden_size=model.hidden_size, feedback=model.feedback,
                   attention_input=model.attention_input,
                   batch=config.optim.batch_size // scaling.num_workers,
                   threads=max(1, int(scaling.cpus_per_worker)), device=device)

    def with_glimpses(self, glimpses: int) -> StepSetting:
        return StepSetting(**{**asdict(self), "glimpses": glimpses})

    def describe(self) -> str:
        feedback = "feedback" if self.feedback else "no feedback"
        return (f"{self.glimpses} glimpses, width {self.hidden_size}, {feedback}, {self.attention_input}, "
                f"batch {self.batch}, {self.threads} thread(s) on {self.device}")


@dataclass(frozen=True)
class StepTiming:
    train_step_s: float
    """Median seconds of one training step (forward, backward, SGD update) at the setting's batch."""
    eval_image_s: float
    """Seconds of evaluation (forward only) per test image."""
    timed_steps: int


def measure_step(setting: StepSetting, budget_s: float = 1.0) -> StepTiming:
    """Time the real model step of `setting` here, for about `budget_s` seconds (at least two steps)."""
    return measure_steps([setting], budget_s)[setting]


def measure_steps(settings: list[StepSetting], budget_s: float = 1.0) -> dict[StepSetting, StepTiming]:
    """Time each setting's real model step here, in turns (one step of each, again and again), so
    that a change in the machine's load hits them all alike; about `budget_s` seconds per setting,
    at least MIN_TIMED_STEPS steps each. Then one evaluation pass of each."""
    import torch

    threads_before = torch.get_num_threads()
    try:
        steppers = {setting: _Stepper(setting) for setting in settings}
        for stepper in steppers.values():
            stepper.train_step(min(WARMUP_BATCH, stepper.setting.batch))  # allocations, optimizer state
        timings: dict[StepSetting, list[float]] = {setting: [] for setting in settings}
        deadline = time.perf_counter() + budget_s * len(settings)
        while min(len(t) for t in timings.values()) < MIN_TIMED_STEPS or time.perf_counter() < deadline:
            for setting, stepper in steppers.items():
                timings[setting].append(stepper.train_step(setting.batch))
        return {setting: StepTiming(statistics.median(timings[setting]), stepper.eval_image_seconds(),
                                    len(timings[setting])) for setting, stepper in steppers.items()}
    finally:
        torch.set_num_threads(threads_before)


class _Stepper:
    """One setting's model, optimizer and batch, ready to time."""

    def __init__(self, setting: StepSetting):
        import torch

        from rsam_dist.model import RSAM

        self.setting = setting
        self.device = torch.device(setting.device)
        self.config = ModelConfig(glimpses=setting.glimpses, hidden_size=setting.hidden_size,
                                  feedback=setting.feedback, attention_input=setting.attention_input)
        generator = torch.Generator().manual_seed(0)
        self.model = RSAM(self.config).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        self.images = (torch.rand(setting.batch, 3, 32, 32, generator=generator) * 2 - 1).to(self.device)
        self.labels = torch.randint(0, 10, (setting.batch,), generator=generator).to(self.device)

    def train_step(self, count: int) -> float:
        import torch

        from rsam_dist.model import rsam_loss

        torch.set_num_threads(self.setting.threads)
        self.model.train()
        synchronize(self.device)
        started = time.perf_counter()
        loss = rsam_loss(self.model(self.images[:count]), self.labels[:count], self.config)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        synchronize(self.device)
        return time.perf_counter() - started

    def eval_image_seconds(self) -> float:
        import torch

        torch.set_num_threads(self.setting.threads)
        self.model.eval()
        with torch.no_grad():
            synchronize(self.device)
            started = time.perf_counter()
            self.model(self.images)
            synchronize(self.device)
        return (time.perf_counter() - started) / self.setting.batch


def synchronize(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
