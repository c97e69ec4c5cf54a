"""Experience replay (book chapter 2), and the rollouts of on-policy learning (book chapter 3).

Both buffers are numpy ring buffers over one storage that keeps each observation **once**: the next
observation of transition ``i`` is the observation of transition ``i + 1``, except where an episode
ended at ``i``; those few last observations are kept on the side. Observations keep the env's dtype,
so Atari and MinAtar frames stay uint8 (1 byte per pixel; agents turn them into floats).

- :class:`ReplayBuffer` samples transitions uniformly (Lin 1992; Mnih et al. 2015).
- :class:`SequenceReplayBuffer` samples fixed-length windows of consecutive transitions for
  recurrent agents (Hausknecht & Stone 2015, "random updates"): a window may start anywhere, the
  agent starts it from a zero recurrent state, and the positions after an episode ends inside the
  window are masked out (``mask`` is False there), so no window mixes two episodes.

``terminated`` (the MDP ended: no bootstrap) and ``truncated`` (a time limit cut it: bootstrap) are
stored apart, since both end the episode but only the first zeroes the target.

On-policy agents learn from the data of the current policy only: :class:`Rollout` holds ``n_steps``
steps of ``N`` parallel envs, and :func:`gae` turns its rewards and values into advantages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["ReplayBuffer", "Rollout", "SequenceBatch", "SequenceReplayBuffer", "TransitionBatch", "gae"]


@dataclass
class TransitionBatch:
    obs: np.ndarray  # (B, *obs_shape)
    actions: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, *obs_shape)
    terminated: np.ndarray  # (B,) bool


@dataclass
class SequenceBatch:
    obs: np.ndarray  # (B, T, *obs_shape)
    actions: np.ndarray  # (B, T) int64
    rewards: np.ndarray  # (B, T) float32
    next_obs: np.ndarray  # (B, T, *obs_shape)
    terminated: np.ndarray  # (B, T) bool
    mask: np.ndarray  # (B, T) bool: False after the window's episode has ended (padding)


class ReplayBuffer:
    """A ring buffer of transitions, sampled uniformly.

    Args:
        capacity: the number of transitions kept; older ones are overwritten.
        obs_shape, obs_dtype: of one observation (uint8 frames stay uint8).
        seed: seeds the buffer's own sampling generator.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type = np.float32,
                 *, seed: int | None = None) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2, got {capacity}")
        self.capacity = capacity
        self.obs_shape, self.obs_dtype = tuple(obs_shape), np.dtype(obs_dtype)
        self.obs = np.zeros((capacity, *self.obs_shape), self.obs_dtype)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, bool)
        self.ended = np.zeros(capacity, bool)  # terminated or truncated
        self.last_obs: dict[int, np.ndarray] = {}  # next observation of transitions that ended an episode
        self.pos, self.full = 0, False
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
            truncated: bool) -> None:
        """Store one transition."""
        i = self.pos
        self.last_obs.pop(i, None)
        self.obs[i] = obs
        self.actions[i], self.rewards[i] = action, reward
        self.terminated[i], self.ended[i] = terminated, terminated or truncated
        if self.ended[i]:
            self.last_obs[i] = np.array(next_obs, dtype=self.obs_dtype)
        else:
            self.obs[(i + 1) % self.capacity] = next_obs  # the next add writes the same observation here
        self.pos = (i + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def _valid_count(self) -> int:
        # Once full, the slot at the write head holds the newest transition's next observation, not
        # its own transition's observation: that (oldest) transition is no longer valid.
        return self.capacity - 1 if self.full else self.pos

    def _oldest(self) -> int:
        return (self.pos + 1) % self.capacity if self.full else 0

    def _next_obs(self, idx: np.ndarray) -> np.ndarray:
        next_obs = self.obs[(idx + 1) % self.capacity]  # a copy: fancy indexing
        flat_idx, flat_next = idx.reshape(-1), next_obs.reshape(-1, *self.obs_shape)  # views of idx, next_obs
        for k in np.flatnonzero(self.ended[flat_idx]):  # few: one per episode
            flat_next[k] = self.last_obs[int(flat_idx[k])]
        return next_obs

    def sample(self, batch_size: int) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        count = self._valid_count()
        if count < 1:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = (self._oldest() + self.rng.integers(0, count, size=batch_size)) % self.capacity
        return TransitionBatch(self.obs[idx], self.actions[idx], self.rewards[idx], self._next_obs(idx),
                               self.terminated[idx])

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as tensors and strings (loads with ``weights_only=True``)."""
        keys = sorted(self.last_obs)
        last = np.stack([self.last_obs[k] for k in keys]) if keys else np.zeros((0, *self.obs_shape), self.obs_dtype)
        return {
            "obs": torch.from_numpy(self.obs), "actions": torch.from_numpy(self.actions),
            "rewards": torch.from_numpy(self.rewards), "terminated": torch.from_numpy(self.terminated),
            "ended": torch.from_numpy(self.ended), "last_obs_index": torch.tensor(keys, dtype=torch.int64),
            "last_obs": torch.from_numpy(last), "pos": self.pos, "full": self.full,
            "rng": json.dumps(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["obs"].shape) != self.obs.shape:
            raise ValueError(f"replay state holds observations {tuple(state['obs'].shape)}, "
                             f"this buffer {self.obs.shape}")
        for name in ("obs", "actions", "rewards", "terminated", "ended"):
            getattr(self, name)[...] = state[name].numpy()
        self.last_obs = {int(k): v.numpy().copy() for k, v in zip(state["last_obs_index"], state["last_obs"],
                                                                   strict=True)}
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        self.rng.bit_generator.state = json.loads(state["rng"])


class SequenceReplayBuffer(ReplayBuffer):
    """Replay of fixed-length windows of consecutive transitions, for recurrent agents.

    ``sample(batch_size)`` returns windows of ``seq_len`` transitions. Windows start anywhere (the
    agent starts each from a zero recurrent state: Hausknecht & Stone's random updates). ``mask`` is
    True up to and including the transition that ends the window's first episode, and False after it.
    An agent with burn-in draws ``burn_in + seq_len`` and trains only on the last ``seq_len`` positions.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type = np.float32,
                 *, seq_len: int, seed: int | None = None) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, seed=seed)
        if not 1 <= seq_len < capacity:
            raise ValueError(f"seq_len must lie in [1, capacity={capacity}), got {seq_len}")
        self.seq_len = seq_len

    def can_sample(self) -> bool:
        return self._valid_count() >= self.seq_len

    def sample(self, batch_size: int) -> SequenceBatch:  # type: ignore[override]
        """``batch_size`` windows of ``seq_len`` consecutive transitions, with a padding mask."""
        count = self._valid_count()
        if count < self.seq_len:
            raise ValueError(f"need at least seq_len={self.seq_len} transitions, the buffer holds {count}")
        starts = self.rng.integers(0, count - self.seq_len + 1, size=batch_size)
        idx = (self._oldest() + starts[:, None] + np.arange(self.seq_len)) % self.capacity  # (B, T)
        ended = self.ended[idx]  # (B, T)
        # Valid up to the first end of episode, inclusive: the number of ends strictly before t is 0.
        mask = np.cumsum(ended, axis=1) - ended == 0
        return SequenceBatch(self.obs[idx], self.actions[idx], self.rewards[idx], self._next_obs(idx),
                             self.terminated[idx], mask)


# --------------------------------------------------------------------------------------------------
# On-policy rollouts (chapter 3)
# --------------------------------------------------------------------------------------------------
def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), time first.

    With ``delta_t = r_t + gamma * (1 - done_t) * V(s_{t+1}) - V(s_t)``::

        A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1},     R_t = A_t + V(s_t)

    ``lam = 1`` gives the Monte Carlo return minus ``V`` (bootstrapped at the rollout's end); ``lam = 0`` the
    one-step TD error. ``done_t`` means step ``t`` ended its episode, so neither the next value nor the next
    advantage (which belong to the next episode) flows back over it. A time limit (truncation) also ends
    the episode here: its bootstrap ``gamma * V(s_final)`` is added to ``r_t`` by the loop beforehand.

    Args:
        rewards, values, dones: ``(T, N)``.
        next_value: ``(N,)``, the value of the observation after the last step.

    Returns:
        ``(advantages, returns)``, each ``(T, N)``.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    not_done = 1.0 - dones.float()
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * not_done[t] * following - values[t]
        last = delta + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


@dataclass
class Rollout:
    """``T = n_steps`` steps of ``N`` envs, time first, collected by the current policy.

    ``episode_starts[t, n]`` is True when ``obs[t, n]`` is the first observation of its episode: a
    recurrent agent resets its state *before* reading it (the reset belongs to ``done[t - 1]``, not to
    ``done[t]``, a classic off-by-one). ``initial_state`` is the agent's state before ``obs[0]``, so that a
    recurrent agent re-reads the rollout from where it really was; ``prefix_obs`` and ``prefix_starts``
    ``(P, N, ...)`` are the ``P`` steps before ``obs[0]``, for an agent that attends over a window of past steps.
    """

    obs: torch.Tensor  # (T, N, *obs_shape)
    actions: torch.Tensor  # (T, N) int64
    log_probs: torch.Tensor  # (T, N): log pi_old(a_t | history)
    values: torch.Tensor  # (T, N): V_old(history_t)
    rewards: torch.Tensor  # (T, N): with gamma * V(final obs) added where a time limit cut the episode
    dones: torch.Tensor  # (T, N) bool: step t ended its episode
    episode_starts: torch.Tensor  # (T, N) bool
    initial_state: Any = None
    prefix_obs: torch.Tensor | None = None  # (P, N, *obs_shape)
    prefix_starts: torch.Tensor | None = None  # (P, N) bool
    next_value: torch.Tensor | None = None  # (N,)
    advantages: torch.Tensor = field(default=None)  # type: ignore[assignment]  # (T, N), from gae
    returns: torch.Tensor = field(default=None)  # type: ignore[assignment]  # (T, N)

    @classmethod
    def empty(cls, n_steps: int, n_envs: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
              device: torch.device) -> Rollout:
        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(obs=zeros(n_steps, n_envs, *obs_shape, dtype=obs_dtype), actions=zeros(n_steps, n_envs,
                   dtype=torch.int64), log_probs=zeros(n_steps, n_envs), values=zeros(n_steps, n_envs),
                   rewards=zeros(n_steps, n_envs), dones=zeros(n_steps, n_envs, dtype=torch.bool),
                   episode_starts=zeros(n_steps, n_envs, dtype=torch.bool))

    @property
    def n_steps(self) -> int:
        return self.obs.shape[0]

    @property
    def n_envs(self) -> int:
        return self.obs.shape[1]

    def compute_advantages(self, gamma: float, lam: float) -> None:
        """Fill ``advantages`` and ``returns`` by :func:`gae` (needs ``next_value``)."""
        if self.next_value is None:
            raise ValueError("Rollout.next_value is not set: the value after the last step is needed to bootstrap")
        self.advantages, self.returns = gae(self.rewards, self.values, self.dones, self.next_value, gamma, lam)
