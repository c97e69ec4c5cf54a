"""Cue recall: a memory task with a dial, the delay (book chapter 4).

At the first step the agent sees a cue, one of ``n_cues`` symbols. Then come ``delay`` corridor
steps whose observations say nothing about the cue. At the last step, the decision, the agent must
choose the action that matches the cue. The delay is the dial: it is how far back the agent must
remember, and nothing else about the task changes with it. Chapter 4 turns it up, 0 to 1024, and
watches which memories keep up: an attention read over the whole episode, an LSTM, self-attention
over a window of the last ``K`` steps, and no memory at all.

This is Bakker's T-maze (Bakker 2001, "Reinforcement learning with long short-term memory"): a signal
at the start of a corridor says which way to turn at its end. Here the agent does not walk: it is a
*passive* T-maze, as in Ni et al. 2023 ("When do transformers shine in RL? Decoupling memory from
credit assignment"). Actions before the decision change nothing (the action space is the same at
every step, ``Discrete(n_cues)``, so that every agent can run it), and the reward comes right after
the decision that earns it. So there is nothing to explore and nothing to assign credit over: Ni et
al.'s *memory length* (how far back the needed observation lies) is ``delay + 1`` steps while their
*credit-assignment length* stays 1. A memory that fails here fails at memory, not at exploration or
at long-horizon credit, which is what their passive T-maze isolates (they find transformers remember
well over long delays but do not help with long-term credit assignment).

Timeline of one episode, ``delay + 2`` steps (``step`` calls), then ``terminated``:

==============  ========================  =========================================
observation     shows                     reward for the action taken there
==============  ========================  =========================================
``o_0``         the cue, one-hot          ``step_reward`` (the action has no effect)
``o_1..o_d``    the corridor flag         ``step_reward`` (the action has no effect)
``o_{d+1}``     the decision flag         ``+1`` if the action is the cue, else ``wrong_reward``
==============  ========================  =========================================

An observation is a flat float32 vector ``[cue one-hot (n_cues), is_corridor, is_decision, noise
(noise_dims)]``: the one-hot is zeros after ``o_0``; the noise dims are fresh Gaussian noise of std
``noise`` at every step (zeros with ``noise=0``), a distraction that carries nothing about the cue.
The observation after the decision, which no agent acts on, is zeros but for its noise.

Returns, with ``n = n_cues`` and ``w = wrong_reward``:

- optimal (remember the cue): ``1 + (delay + 1) * step_reward``;
- random, and also the best a memoryless agent can do, since the cue is uniform and nothing but
  ``o_0`` tells it: ``(1 + (n - 1) * w) / n + (delay + 1) * step_reward``. With the defaults
  (``n = 2``, ``w = -1``, ``step_reward = 0``) that is 0 against 1; with ``w = 0``, ``1 / n``.

A window of the last ``K`` observations (self-attention over ``K`` steps, or a stack of ``K`` frames)
holds the cue at the decision only if ``K >= delay + 2``: beyond that it is a memoryless agent.

From the command line, use the registered ids with the delay in the name (the ``train`` command
takes no env arguments): ``CueRecall-D{delay}-v0`` for delay in :data:`CUE_RECALL_DELAYS`::

    python -m companion train --algo ppo-lstm --env CueRecall-D64-v0 --seed 0

From Python, any setting goes through :func:`companion.envs.make_env` (or ``gymnasium.make``):
``make_env("CueRecall-v0", delay=100, n_cues=4, noise=1.0, noise_dims=8, wrong_reward=0.0)``.
The ids belong to the ``"gym"`` env family, whose presets every agent has.

The env is deterministic given the seed of ``reset`` (the cue and the noise come from
``self.np_random``) and cheap: a step copies one small array, so the agents' networks, never the env,
set the pace of chapter 4's runs.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["CUE_RECALL_DELAYS", "CueRecallEnv", "cue_recall_id", "register_memory_tasks"]

#: The delays with an id of their own, ``CueRecall-D{delay}-v0``: the x-axis of chapter 4's plot.
CUE_RECALL_DELAYS: tuple[int, ...] = (0, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_ENTRY_POINT = "companion.memory_tasks:CueRecallEnv"


class CueRecallEnv(gym.Env):
    """The passive cue-recall corridor (a passive T-maze); see the module's docstring.

    Args:
        delay: corridor steps between the cue and the decision (>= 0); an episode is ``delay + 2`` steps.
        n_cues: number of cues, and of actions (>= 2).
        noise: std of the Gaussian noise in the ``noise_dims`` extra dims (>= 0; > 0 needs ``noise_dims``).
        noise_dims: number of extra noise dims in the observation (>= 0).
        wrong_reward: reward for a wrong decision (-1 by default; 0 gives rewards in {0, 1}).
        step_reward: reward for each step before the decision (0 by default; a small negative value
            is a per-step penalty). Actions there have no effect, so it does not depend on them.
        render_mode: only ``None`` (the env has no rendering).

    ``cue`` holds the current episode's cue, for tests and plots; an agent must not read it.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, delay: int = 16, n_cues: int = 2, noise: float = 0.0, noise_dims: int = 0,
                 wrong_reward: float = -1.0, step_reward: float = 0.0, render_mode: str | None = None) -> None:
        if int(delay) != delay or delay < 0:
            raise ValueError(f"delay must be an integer >= 0, got {delay!r}")
        if int(n_cues) != n_cues or n_cues < 2:
            raise ValueError(f"n_cues must be an integer >= 2, got {n_cues!r}")
        if int(noise_dims) != noise_dims or noise_dims < 0:
            raise ValueError(f"noise_dims must be an integer >= 0, got {noise_dims!r}")
        if not noise >= 0.0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        if noise > 0.0 and noise_dims == 0:
            raise ValueError(f"noise={noise} needs noise_dims > 0 (the dims that carry it)")
        if render_mode is not None:
            raise ValueError(f"CueRecallEnv has no rendering; got render_mode={render_mode!r}")
        self.delay, self.n_cues, self.noise_dims = int(delay), int(n_cues), int(noise_dims)
        self.noise, self.wrong_reward, self.step_reward = float(noise), float(wrong_reward), float(step_reward)
        self.render_mode = render_mode
        self.corridor_index, self.decision_index = self.n_cues, self.n_cues + 1
        size = self.n_cues + 2 + self.noise_dims
        unbounded = np.full(self.noise_dims, np.finfo(np.float32).max, np.float32)  # as CartPole's velocities
        low = np.concatenate([np.zeros(self.n_cues + 2, np.float32), -unbounded])
        high = np.concatenate([np.ones(self.n_cues + 2, np.float32), unbounded])
        self.observation_space = spaces.Box(low, high, (size,), np.float32)
        self.action_space = spaces.Discrete(self.n_cues)
        self._corridor = np.zeros(size, np.float32)
        self._corridor[self.corridor_index] = 1.0
        self._decision = np.zeros(size, np.float32)
        self._decision[self.decision_index] = 1.0
        self._end = np.zeros(size, np.float32)
        self.cue = -1
        self._t = -1  # steps taken in this episode; -1: no episode under way (before reset, after the decision)

    def _observe(self, base: np.ndarray) -> np.ndarray:
        obs = base.copy()
        if self.noise:
            noise = obs[self.n_cues + 2:]  # a view: filled in place
            self.np_random.standard_normal(dtype=np.float32, out=noise)
            noise *= np.float32(self.noise)
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(self.n_cues))
        self._t = 0
        obs = self._observe(self._end)
        obs[self.cue] = 1.0
        return obs, {}

    def step(self, action: Any):
        t = self._t
        if t < 0:
            raise RuntimeError("CueRecallEnv.step called before reset or after the decision ended the episode")
        a = int(action)
        if not 0 <= a < self.n_cues:
            raise ValueError(f"action must be in [0, {self.n_cues}), got {action!r}")
        if t <= self.delay:  # the action at the cue or in the corridor: no effect
            self._t = t + 1
            obs = self._observe(self._corridor if t < self.delay else self._decision)
            return obs, self.step_reward, False, False, {}
        self._t = -1  # the decision
        return self._observe(self._end), 1.0 if a == self.cue else self.wrong_reward, True, False, {}


def cue_recall_id(delay: int) -> str:
    """The registered id for a delay in :data:`CUE_RECALL_DELAYS`: ``cue_recall_id(64) == "CueRecall-D64-v0"``."""
    if delay not in CUE_RECALL_DELAYS:
        raise ValueError(f"no id for delay {delay}; registered: {', '.join(map(str, CUE_RECALL_DELAYS))} "
                         f"(any delay: make_env('CueRecall-v0', delay={delay}))")
    return f"CueRecall-D{delay}-v0"


def register_memory_tasks() -> None:
    """Register ``CueRecall-v0`` (settings as keyword arguments; delay 16 by default) and ``CueRecall-D{d}-v0``
    for each ``d`` in :data:`CUE_RECALL_DELAYS` (idempotent). :mod:`companion.envs` calls it on import.

    No ``max_episode_steps``: an episode ends by itself after ``delay + 2`` steps, and a ``TimeLimit``
    would only cost time (and be wrong for ``CueRecall-v0`` with another delay).
    """
    if "CueRecall-v0" not in gym.registry:
        gym.register("CueRecall-v0", entry_point=_ENTRY_POINT)
    for delay in CUE_RECALL_DELAYS:
        env_id = f"CueRecall-D{delay}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=_ENTRY_POINT, kwargs={"delay": delay})


register_memory_tasks()
