"""Training loops, one per algorithm family. The harness (:mod:`companion.train`) runs
``LOOPS[agent.loop](context)``; a loop never imports the harness.

- :mod:`companion.loops.off_policy`: Q-learning from replay (chapter 2 and the attention Q-agents).
- :mod:`companion.loops.on_policy`: actor-critic from rollouts over vector envs (chapter 3).
"""

from __future__ import annotations

from collections.abc import Callable

from companion.loops import off_policy, on_policy
from companion.loops.base import LoopContext, LoopResult, UpdateLog

#: ``agent.loop`` -> the function that trains it
LOOPS: dict[str, Callable[[LoopContext], LoopResult]] = {"off_policy": off_policy.run, "on_policy": on_policy.run}

__all__ = ["LOOPS", "LoopContext", "LoopResult", "UpdateLog"]
