"""Schedules: from training progress (epoch) to the cumulative target sparsity.

A schedule lists its pruning *events*: ``{epoch: target}``, each applied at the start of that
epoch (epoch 0 = before any training). Targets are cumulative fractions of the prunable weights,
non-decreasing, and the last event hits the final target exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from prunelab.errors import UserError


class ScheduleError(UserError):
    """A schedule that does not fit the run (one-line message)."""


class Schedule(ABC):
    name: str = "schedule"

    @abstractmethod
    def events(self, final: float) -> dict[int, float]:
        """``{epoch: cumulative target}`` in increasing epoch order, last one equal to ``final``."""

    def current(self, epoch: int, final: float) -> float:
        """Target in force during ``epoch`` (after its event, if any)."""
        reached = [t for e, t in self.events(final).items() if e <= epoch]
        return reached[-1] if reached else 0.0

    def validate(self, max_epochs: int, final: float = 0.5) -> None:
        ev = self.events(final)
        bad = [e for e in ev if e < 0]
        if bad:
            raise ScheduleError(f"schedule={self.name} has a pruning epoch {bad[0]} < 0")
        last = max(ev)
        if last > max_epochs - 1:
            raise ScheduleError(
                f"schedule={self.name} prunes at epoch {last} but the run has epochs={max_epochs} "
                f"(0..{max_epochs - 1}): the last pruning epoch must be <= {max_epochs - 1}; set "
                f"{'schedule.at_epoch' if hasattr(self, 'at_epoch') else 'schedule.end_epoch'}"
                f"<={max_epochs - 1} or epochs>={last + 1} (trainer.max_epochs, where set)"
            )


def _check_int(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScheduleError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


class OneShot(Schedule):
    """Prune once, to the final target, at the start of ``at_epoch``; then fine-tune."""

    name = "oneshot"

    def __init__(self, at_epoch: int = 1):
        self.at_epoch = _check_int("schedule.at_epoch", at_epoch)

    def events(self, final: float) -> dict[int, float]:
        return {self.at_epoch: final}


class Iterative(Schedule):
    """``rounds`` prune rounds spread evenly from ``start_epoch`` to ``end_epoch``, fine-tuning in
    between. ``steps=geometric`` (default) removes the same *fraction of the remaining* weights each
    round (target_i = 1 - (1 - s)^(i/n), as in iterative magnitude pruning, Han et al. 2015);
    ``steps=linear`` adds the same fraction of all weights each round (target_i = s * i / n).
    ``rewind``: ``none`` (fine-tune on), ``lr`` or ``weights`` after each round (Renda et al.
    2020; :mod:`prunelab.pruning.rewinding`), weights to epoch ``rewind_epoch``."""

    name = "iterative"
    STEPS = ("geometric", "linear")

    def __init__(self, start_epoch: int = 1, end_epoch: int = 5, rounds: int = 3,
                 steps: str = "geometric", rewind: str = "none", rewind_epoch: int = 0):
        from prunelab.pruning.rewinding import REWINDS

        rewind = getattr(rewind, "value", rewind)
        if rewind not in REWINDS:
            raise ScheduleError(f"schedule.rewind={rewind!r} is not one of {', '.join(REWINDS)}")
        self.rewind = rewind  # after each round (prunelab.pruning.rewinding)
        self.rewind_epoch = _check_int("schedule.rewind_epoch", rewind_epoch)
        self.start_epoch = _check_int("schedule.start_epoch", start_epoch)
        self.end_epoch = _check_int("schedule.end_epoch", end_epoch)
        self.rounds = _check_int("schedule.rounds", rounds, 1)
        steps = getattr(steps, "value", steps)
        if steps not in self.STEPS:
            raise ScheduleError(f"schedule.steps={steps!r} is not one of {', '.join(self.STEPS)}")
        self.steps = steps
        if self.end_epoch < self.start_epoch:
            raise ScheduleError(f"schedule.end_epoch={end_epoch} is before start_epoch={start_epoch}")
        if self.rounds > 1 and self.end_epoch - self.start_epoch < self.rounds - 1:
            raise ScheduleError(
                f"schedule.rounds={rounds} does not fit between start_epoch={start_epoch} and "
                f"end_epoch={end_epoch} (one round per epoch at most)"
            )
        if self.rounds == 1 and self.end_epoch != self.start_epoch:
            self.start_epoch = self.end_epoch  # one round: prune at the end point

    def epochs(self) -> list[int]:
        if self.rounds == 1:
            return [self.end_epoch]
        span = self.end_epoch - self.start_epoch
        return [self.start_epoch + (i * span) // (self.rounds - 1) for i in range(self.rounds)]

    def events(self, final: float) -> dict[int, float]:
        n = self.rounds
        out = {}
        for i, e in enumerate(self.epochs(), start=1):
            if i == n:
                t = final
            elif self.steps == "geometric":
                t = 1.0 - (1.0 - final) ** (i / n)
            else:
                t = final * i / n
            out[e] = t
        return out


class Gradual(Schedule):
    """Cubic schedule of Zhu & Gupta (2017), "To prune, or not to prune":
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3 for t = t0, t0 + dt, ..., t0 + n * dt,
    with t0 = ``start_epoch``, t0 + n * dt = ``end_epoch`` and dt = ``frequency`` epochs."""

    name = "gradual"

    def __init__(self, start_epoch: int = 1, end_epoch: int = 6, frequency: int = 1,
                 initial_sparsity: float = 0.0, every_steps: int | None = None):
        # every_steps: the same ramp with an event every that many optimizer steps (Zhu & Gupta
        # prune every 100-1,000 steps); null: one event per `frequency` epochs at epoch starts
        if every_steps is not None:
            self.every_steps = _check_int("schedule.every_steps", every_steps, 1)
        else:
            self.every_steps = None
        self.start_epoch = _check_int("schedule.start_epoch", start_epoch)
        self.end_epoch = _check_int("schedule.end_epoch", end_epoch)
        self.frequency = _check_int("schedule.frequency", frequency, 1)
        if self.end_epoch < self.start_epoch:
            raise ScheduleError(f"schedule.end_epoch={end_epoch} is before start_epoch={start_epoch}")
        if (self.end_epoch - self.start_epoch) % self.frequency:
            raise ScheduleError(
                f"schedule.frequency={frequency} does not divide end_epoch - start_epoch = "
                f"{self.end_epoch - self.start_epoch}"
            )
        if not (isinstance(initial_sparsity, (int, float)) and 0.0 <= initial_sparsity < 1.0):
            raise ScheduleError(f"schedule.initial_sparsity={initial_sparsity!r} must be in [0, 1)")
        self.initial_sparsity = float(initial_sparsity)

    def step_events(self, final: float, steps_per_epoch: int) -> dict[int, float]:
        """``every_steps``: ``{optimizer steps done: cumulative target}`` on the cubic ramp from
        the start of ``start_epoch`` to the start of ``end_epoch`` (the last event exactly there,
        at ``final``)."""
        t0, t1 = self.start_epoch * steps_per_epoch, self.end_epoch * steps_per_epoch
        if t1 <= t0:
            return {t1: final}
        si = min(self.initial_sparsity, final)
        points = list(range(t0, t1, self.every_steps)) + [t1]
        return {t: final + (si - final) * (1.0 - (t - t0) / (t1 - t0)) ** 3 for t in points}

    def events(self, final: float) -> dict[int, float]:
        n = (self.end_epoch - self.start_epoch) // self.frequency
        if n == 0:
            return {self.end_epoch: final}
        si = min(self.initial_sparsity, final)
        out = {}
        for k in range(n + 1):
            e = self.start_epoch + k * self.frequency
            out[e] = final if k == n else final + (si - final) * (1.0 - k / n) ** 3
        return out


__all__ = ["Schedule", "ScheduleError", "OneShot", "Iterative", "Gradual"]
