"""How far a sweep is and when it will end: the tail of each progress line the sweep prints.

    [a1b2c3 (glimpses=2)] epoch 3/10  loss 1.2345  test top-1 41.20%  | trials 2/8 done, 2 running, ETA 6m40s

Plain Python, fed by the Tune callback in `rsam_dist.sweep.tune`, so that its arithmetic is tested
without Ray. One `SweepProgress` lives for the whole command, across the Tune experiments of an
optuna sweep with grid keys; a resumed sweep counts the trials it finished before as done.

The ETA: a trial's length is what finished trials took (their mean), or before any has finished,
what the running ones will take at their pace so far (seconds per epoch x epochs). The work left
is the rest of each running trial plus a whole trial for each one not started, shared by the
trials that run at once; never less than the longest rest of a running trial. ASHA ends trials
early, so there it is an upper bound.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rsam_dist.metrics import format_duration


@dataclass
class _Running:
    started: float
    """When the epochs counted from `base_epochs` began (a resumed trial: its first report here)."""
    base_epochs: int = 0
    epochs_done: int = 0
    last_epoch_at: float | None = None


@dataclass
class SweepProgress:
    total: int
    """Trials of the whole sweep (every experiment)."""
    epochs: int
    """Epochs of a trial that runs to the end."""
    concurrency: int
    """Trials that run at once."""
    clock: Callable[[], float] = time.monotonic
    done_before: int = 0
    """Trials finished in earlier experiments of this sweep, or before a resume."""
    _running: dict[str, _Running] = field(default_factory=dict)
    _finished: set[str] = field(default_factory=set)
    _durations: list[float] = field(default_factory=list)

    def started(self, trial_id: str) -> None:
        self._running[trial_id] = _Running(self.clock())

    def epoch(self, trial_id: str, epoch: int) -> None:
        """Trial `trial_id` finished its `epoch`-th epoch (1-based; a resumed trial starts past 1)."""
        now = self.clock()
        trial = self._running.setdefault(trial_id, _Running(now))
        if trial.last_epoch_at is None and epoch > 1:
            # A trial resumed from its checkpoint: only the epochs it runs from here say its pace.
            trial.started, trial.base_epochs = now, epoch
        trial.epochs_done, trial.last_epoch_at = epoch, now

    def finished(self, trial_id: str) -> None:
        """Trial `trial_id` ended (completed, stopped early or failed)."""
        trial = self._running.pop(trial_id, None)
        if trial is not None and trial.last_epoch_at is not None and trial.base_epochs == 0:
            self._durations.append(self.clock() - trial.started)
        self._finished.add(trial_id)

    def end_experiment(self, finished_there: int) -> None:
        """An experiment ended with `finished_there` trials done: they count as done from now on."""
        self.done_before += finished_there
        self._finished.clear()
        self._running.clear()

    def done(self, already_finished: Iterable[str] = ()) -> int:
        """Trials done: earlier experiments', this one's, and `already_finished` (trial ids that
        Tune restored finished, which never start here)."""
        return self.done_before + len(self._finished | set(already_finished))

    def eta_seconds(self, done: int) -> float | None:
        """Seconds until the last trial ends, or None while nothing says how long a trial takes."""
        now = self.clock()
        paced = {trial_id: self._pace(trial, now) for trial_id, trial in self._running.items()}
        known = [length for length in paced.values() if length is not None]
        if self._durations:
            typical = statistics.mean(self._durations)
        elif known:
            typical = statistics.mean(known)
        else:
            return None
        rests = [max((paced[trial_id] or typical) - (now - trial.started), 0.0)
                 for trial_id, trial in self._running.items()]
        waiting = max(self.total - done - len(self._running), 0)
        shared = (sum(rests) + waiting * typical) / max(self.concurrency, 1)
        return max(shared, max(rests, default=0.0))

    def _pace(self, trial: _Running, now: float) -> float | None:
        """The whole length of a running trial at its pace so far, once it has finished an epoch."""
        epochs_seen = trial.epochs_done - trial.base_epochs
        if trial.last_epoch_at is None or epochs_seen <= 0:
            return None
        per_epoch = (trial.last_epoch_at - trial.started) / epochs_seen
        return (trial.last_epoch_at - trial.started) + per_epoch * max(self.epochs - trial.epochs_done, 0)

    def summary(self, already_finished: Iterable[str] = ()) -> str:
        """`trials 2/8 done, 2 running, ETA 6m40s` (the ETA once it can be told)."""
        done = self.done(already_finished)
        running = len(self._running)
        eta = self.eta_seconds(done)
        if done >= self.total and not running:
            when = "sweep done"
        elif eta is None:
            when = "ETA after the first epoch"
        else:
            when = f"ETA {format_duration(eta)}"
        return f"trials {min(done, self.total)}/{self.total} done, {running} running, {when}"
