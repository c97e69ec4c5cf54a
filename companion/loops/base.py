"""What the harness hands a training loop, and what a loop hands back.

A loop never imports the harness (:mod:`companion.train`). The harness builds the agent and the run
directory, then calls ``LOOPS[agent.loop](context)`` with a :class:`LoopContext`: how to make an env,
the schedule (steps, evaluation and checkpoint cadence), and three callbacks (evaluate, checkpoint, a
stop flag). The loop owns the env, the replay buffer or rollout, and the order of acting and learning;
it returns a :class:`LoopResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from companion.records import UPDATE_LOG_EVERY, RunDir

__all__ = ["LoopContext", "LoopResult", "StopFlag", "UpdateLog", "next_multiple"]


class StopFlag(Protocol):
    """Set by the harness when the run should stop at the next boundary (Ctrl-C, SIGTERM)."""

    requested: bool


@dataclasses.dataclass
class LoopContext:
    """Everything a loop needs from the harness.

    Attributes:
        agent: the agent to train (its ``loop`` attribute chose this loop).
        env_fn: makes one training env, with the run's wrappers (POMDP masks, frame stacks).
        records: the run directory: the loop appends ``metrics.csv`` rows and ``updates.csv`` rows.
        seed: the run's seed; episodes are reset with seeds derived from it.
        total_steps: environment steps to run (a vector env's steps count once per sub-env).
        eval_every: evaluate when the step count reaches a multiple of this (at the next boundary).
        checkpoint_every: checkpoint at the first boundary at or after each multiple of this.
        evaluate: ``evaluate(step) -> mean return``: the harness evaluates the agent and records it.
        checkpoint: ``checkpoint(loop_state, replay)``: the harness saves the agent, the random state and
            the loop's own state (and the replay buffer, for off-policy loops).
        stop: the harness's stop flag; the loop stops at its next boundary once it is set.
        stop_at: also stop (with a checkpoint) at the first boundary at or after this step.
        progress: a tqdm-like bar (``update``, ``set_postfix``, ``n``).
        resume: ``(loop_state, replay)`` from the checkpoint to continue from, or ``None``.
    """

    agent: Any
    env_fn: Callable[[], Any]
    records: RunDir
    seed: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    evaluate: Callable[[int], float]
    checkpoint: Callable[[dict[str, Any], dict[str, Any] | None], None]
    stop: StopFlag
    stop_at: int | None
    progress: Any
    resume: tuple[dict[str, Any], dict[str, Any] | None] | None = None

    def should_stop(self, step: int) -> bool:
        """Whether to stop at this boundary: a signal arrived, or ``stop_at`` was reached."""
        return self.stop.requested or (self.stop_at is not None and step >= self.stop_at)


@dataclasses.dataclass
class LoopResult:
    steps: int
    episodes: int
    interrupted: bool
    last_eval: float  # mean return of the last evaluation (nan if none)


def next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` strictly after ``step``."""
    return (step // every + 1) * every


class UpdateLog:
    """Training scalars summed between rows of ``updates.csv``, one row per :data:`UPDATE_LOG_EVERY` steps.

    A row is due when the step count reaches the next multiple of ``every``; it holds the mean of each
    scalar over the updates since the last row (no row if there were none). Its state is part of a
    checkpoint, so a resumed run writes the same rows as an uninterrupted one.
    """

    def __init__(self, records: RunDir, every: int = UPDATE_LOG_EVERY) -> None:
        self.records, self.every = records, every
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, info: dict[str, float]) -> None:
        """Add one update's scalars."""
        for key, value in info.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def due(self, step: int, previous_step: int) -> bool:
        """Whether a multiple of ``every`` lies in ``(previous_step, step]``."""
        return step // self.every > previous_step // self.every

    def write(self, step: int, extra: dict[str, float] | None = None) -> None:
        """Write the row for ``step`` (the means, then ``extra`` scalars computed by the loop), and start anew."""
        if self.count:
            row = {k: v / self.count for k, v in self.sums.items()}
            row.update(extra or {})
            self.records.append_updates(step, row)
        self.sums, self.count = {}, 0

    def state(self) -> list[Any]:
        return [self.sums, self.count]

    def load(self, state: list[Any]) -> None:
        self.sums, self.count = dict(state[0]), int(state[1])
