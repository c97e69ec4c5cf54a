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
- :class:`PrioritizedReplayBuffer` and :class:`PrioritizedSequenceReplayBuffer` (book chapter 4) sample
  transitions, or windows by their start, in proportion to a priority ``(|delta| + eps)^alpha`` kept in
  a :class:`SumTree` (Schaul et al. 2016), and return importance-sampling weights with each batch.

``terminated`` (the MDP ended: no bootstrap) and ``truncated`` (a time limit cut it: bootstrap) are
stored apart, since both end the episode but only the first zeroes the target.

On-policy agents learn from the data of the current policy only: :class:`Rollout` holds ``n_steps``
steps of ``N`` parallel envs, and :func:`gae` turns its rewards and values into advantages.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["MinTree", "PrioritizedReplayBuffer", "PrioritizedSequenceReplayBuffer", "ReplayBuffer", "Rollout",
           "SequenceBatch", "SequenceReplayBuffer", "SumTree", "TransitionBatch", "gae", "window_td_error"]


@dataclass
class TransitionBatch:
    obs: np.ndarray  # (B, *obs_shape)
    actions: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float32
    next_obs: np.ndarray  # (B, *obs_shape)
    terminated: np.ndarray  # (B,) bool
    indices: np.ndarray | None = None  # (B,) int64: the slots sampled (prioritized replay only)
    weights: np.ndarray | None = None  # (B,) float32: importance-sampling weights (prioritized replay only)
    td_errors: np.ndarray | None = None  # (B,): |TD error| per sample, left by the agent's loss (prioritized only)


@dataclass
class SequenceBatch:
    obs: np.ndarray  # (B, T, *obs_shape)
    actions: np.ndarray  # (B, T) int64
    rewards: np.ndarray  # (B, T) float32
    next_obs: np.ndarray  # (B, T, *obs_shape)
    terminated: np.ndarray  # (B, T) bool
    mask: np.ndarray  # (B, T) bool: False after the window's episode has ended (padding)
    states: np.ndarray | None = None  # (B, S) float32: the agent's stored state at each window's start (R2D2)
    indices: np.ndarray | None = None  # (B,) int64: the slots the windows start at (prioritized replay only)
    weights: np.ndarray | None = None  # (B,) float32: importance-sampling weights (prioritized replay only)
    td_errors: np.ndarray | None = None  # (B,): each window's TD error (window_td_error), left by the agent's loss


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
        return self._gather(idx)

    def _gather(self, idx: np.ndarray) -> TransitionBatch:
        """The transitions at slots ``idx`` ``(B,)``."""
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

    With ``state_size > 0`` the buffer also keeps, per transition, the recurrent state the agent acted
    from (R2D2's stored state, Kapturowski et al. 2019: :meth:`add_state` after each :meth:`add`), and a
    batch carries the state at each window's first step (``states`` ``(B, state_size)``), so the agent can
    start the window from it instead of from zeros.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type = np.float32,
                 *, seq_len: int, state_size: int = 0, seed: int | None = None) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, seed=seed)
        if not 1 <= seq_len < capacity:
            raise ValueError(f"seq_len must lie in [1, capacity={capacity}), got {seq_len}")
        if state_size < 0:
            raise ValueError(f"state_size must be >= 0, got {state_size}")
        self.seq_len = seq_len
        self.states = np.zeros((capacity, state_size), np.float32) if state_size else None

    def add_state(self, state: np.ndarray) -> None:
        """Store the recurrent state ``(state_size,)`` the agent acted from at the transition just added."""
        if self.states is None:
            raise ValueError("this buffer keeps no states: build it with state_size > 0")
        state = np.asarray(state, np.float32).reshape(-1)
        if state.shape != self.states.shape[1:]:
            raise ValueError(f"expected a state of size {self.states.shape[1]}, got {state.size}")
        self.states[(self.pos - 1) % self.capacity] = state

    def can_sample(self) -> bool:
        return self._valid_count() >= self.seq_len

    def sample(self, batch_size: int) -> SequenceBatch:  # type: ignore[override]
        """``batch_size`` windows of ``seq_len`` consecutive transitions, with a padding mask."""
        count = self._valid_count()
        if count < self.seq_len:
            raise ValueError(f"need at least seq_len={self.seq_len} transitions, the buffer holds {count}")
        starts = self.rng.integers(0, count - self.seq_len + 1, size=batch_size)
        return self._gather((self._oldest() + starts) % self.capacity)

    def _gather(self, first: np.ndarray) -> SequenceBatch:  # type: ignore[override]
        """The windows that start at slots ``first`` ``(B,)``."""
        idx = (first[:, None] + np.arange(self.seq_len)) % self.capacity  # (B, T)
        ended = self.ended[idx]  # (B, T)
        # Valid up to the first end of episode, inclusive: the number of ends strictly before t is 0.
        mask = np.cumsum(ended, axis=1) - ended == 0
        states = None if self.states is None else self.states[first]  # (B, S)
        return SequenceBatch(self.obs[idx], self.actions[idx], self.rewards[idx], self._next_obs(idx),
                             self.terminated[idx], mask, states=states)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.states is not None:
            state["states"] = torch.from_numpy(self.states)
        return state

    def load_state_dict(self, state: dict) -> None:
        if ("states" in state) != (self.states is not None):
            raise ValueError("replay state and buffer disagree on stored recurrent states (R2D2's stored_state)")
        if self.states is not None and tuple(state["states"].shape) != self.states.shape:
            raise ValueError(f"replay state holds states {tuple(state['states'].shape)}, "
                             f"this buffer {self.states.shape}")
        super().load_state_dict(state)
        if self.states is not None:
            self.states[...] = state["states"].numpy()


# --------------------------------------------------------------------------------------------------
# Prioritized replay (chapter 4)
# --------------------------------------------------------------------------------------------------
class _SegmentTree:
    """A binary tree over ``capacity`` leaves in which each inner node is ``op`` of its two children.

    The tree lives in one float64 array, as a heap: node 1 is the root, node ``i`` has the children
    ``2i`` and ``2i + 1``, and leaf ``j`` is node ``size + j``, where ``size`` is ``capacity`` rounded up
    to a power of two (the extra leaves hold the identity of ``op`` and are never read as slots). A
    write recomputes the nodes above the leaf from their children, so every inner node is always
    exactly ``op(left, right)`` of its current children: a tree kept this way carries no error from
    its history (one that adds differences on the way up does), and :meth:`rebuild`, which recomputes
    every node from the leaves, gives the same array bit for bit. A batch of writes climbs all its
    paths together, one level per step: ``log2(size)`` numpy operations, whatever the batch size.
    """

    _identity: float
    _op: Any  # a numpy ufunc: np.add, np.minimum
    _scalar_op: Any  # the same operation on two floats

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.size = 1 << (capacity - 1).bit_length()  # leaves, a power of two >= capacity
        self.depth = self.size.bit_length() - 1  # levels below the root
        self.tree = np.full(2 * self.size, self._identity, np.float64)  # tree[0] is unused

    def __getitem__(self, index: Any) -> Any:
        """The leaves at ``index`` (an int or an array of slots)."""
        return self.tree[self.size + np.asarray(index)]

    def values(self) -> np.ndarray:
        """A copy of the ``capacity`` leaves."""
        return self.tree[self.size:self.size + self.capacity].copy()

    def update(self, index: Any, value: Any) -> None:
        """Set leaves ``index`` (an int, or ``(B,)`` slots in ``[0, capacity)``) to ``value``, and the nodes above.

        A slot that appears twice in one batch gets one of its values (numpy does not say which).
        """
        t = self.tree
        if np.ndim(index) == 0:  # one leaf (each added transition): a walk up in plain Python
            i = int(index) + self.size
            t[i] = value
            while i > 1:
                i >>= 1
                node = self._scalar_op(t[2 * i], t[2 * i + 1])
                if node == t[i]:  # unchanged, so is everything above it
                    break
                t[i] = node
            return
        i = np.asarray(index, np.intp) + self.size
        t[i] = value
        pairs = t.reshape(-1, 2)  # row i holds the children of node i (2i and 2i + 1): one take reads both
        for _ in range(self.depth):  # all B paths, one level at a time
            i >>= 1
            children = pairs.take(i, axis=0)  # (B, 2)
            t[i] = self._op(children[:, 0], children[:, 1])

    def rebuild(self) -> None:
        """Recompute every inner node from the leaves, one level at a time."""
        t = self.tree
        for level in range(self.depth - 1, -1, -1):
            lo, hi = 1 << level, 2 << level
            self._op(t[2 * lo:2 * hi:2], t[2 * lo + 1:2 * hi:2], out=t[lo:hi])

    def load(self, values: np.ndarray) -> None:
        """Set all ``capacity`` leaves at once, then :meth:`rebuild`."""
        self.tree[self.size:self.size + self.capacity] = values
        self.rebuild()


class SumTree(_SegmentTree):
    """A sum tree (Schaul et al. 2016, appendix B.2.1): leaves hold non-negative priorities, each node the
    sum of its subtree, so that :attr:`total` is read in O(1) and :meth:`find` draws a leaf with
    probability proportional to its value in O(log N).

    Leaf ``j`` owns the interval ``[prefix(j), prefix(j) + p_j)`` of ``[0, total)``, where ``prefix(j)`` is
    the sum of the leaves before it; a leaf of value 0 owns nothing and is never found. Any capacity works
    (see ``_SegmentTree`` in the source for the layout, the batch updates and why the sums do not drift).

    >>> tree = SumTree(5)
    >>> tree.update(np.arange(5), [1.0, 0.0, 2.0, 0.0, 1.0])
    >>> tree.total, tree.find([0.5, 1.0, 2.9, 3.5]).tolist()
    (4.0, [0, 2, 2, 4])
    """

    _identity = 0.0
    _op = np.add
    _scalar_op = operator.add

    @property
    def total(self) -> float:
        """The sum of all leaves."""
        return float(self.tree[1])

    def find(self, mass: Any) -> np.ndarray:
        """The leaves ``(B,)`` whose intervals hold ``mass`` ``(B,)``, values in ``[0, total)``.

        All ``B`` queries descend together, one level per step: at each node a query goes left if its
        mass is below the left subtree's sum, else right with that sum taken off. A query at or past
        ``total`` gets the last leaf with a positive value, one below 0 the first.
        """
        t = self.tree
        if not t[1] > 0:
            raise ValueError("the sum tree holds no positive value to find")
        v = np.array(mass, np.float64)  # a copy: worn down on the way
        i = np.ones(v.shape, np.intp)
        for _ in range(self.depth):
            i += i  # the left child
            left = t.take(i)
            right = v >= left
            np.subtract(v, left, out=v, where=right)
            i += right
        missed = t.take(i) <= 0
        if missed.any():
            # Rounding (or a mass at total) carried a query past the last positive leaf of a subtree,
            # onto a leaf of value 0. Rare; those queries descend again, never into an empty subtree.
            i[missed] = self._find_positive(np.array(mass, np.float64)[missed])
        return i - self.size

    def _find_positive(self, v: np.ndarray) -> np.ndarray:
        t = self.tree
        i = np.ones(v.shape, np.intp)
        for _ in range(self.depth):  # invariant: the node i holds a positive sum
            i += i
            left, right_sum = t.take(i), t.take(i + 1)
            right = (right_sum > 0) & ((v >= left) | (left <= 0))
            np.subtract(v, left, out=v, where=right)
            i += right
        return i


class MinTree(_SegmentTree):
    """A min tree: each node holds the smallest leaf of its subtree, so :attr:`min` is read in O(1).

    Prioritized replay keeps the valid slots' priorities in it (``inf`` elsewhere) for the smallest
    sampling probability, which normalises the importance-sampling weights (Schaul et al. 2016, sec. 3.4).
    """

    _identity = math.inf
    _op = np.minimum
    _scalar_op = min

    @property
    def min(self) -> float:
        """The smallest leaf (``inf`` if none was set)."""
        return float(self.tree[1])


def window_td_error(td_errors: np.ndarray, mask: np.ndarray, eta: float) -> np.ndarray:
    """R2D2's TD error of a window (Kapturowski et al. 2019, sec. 2): ``eta * max_t |delta_t| +
    (1 - eta) * mean_t |delta_t|`` over the positions where ``mask`` is True.

    A pure mean would let one surprising step drown among many dull ones; a pure max would rank a
    window by one step alone. R2D2 uses ``eta = 0.9``. A window with no such position gets 0.

    Args:
        td_errors: ``(B, T)`` TD errors (their sign does not matter).
        mask: ``(B, T)`` bool, True where the loss applies.

    Returns:
        ``(B,)`` float64.
    """
    mask = np.asarray(mask, bool)
    delta = np.where(mask, np.abs(np.asarray(td_errors, np.float64)), 0.0)  # (B, T)
    mean = delta.sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    return eta * delta.max(axis=1, initial=0.0) + (1.0 - eta) * mean


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay (Schaul et al. 2016, "Prioritized Experience Replay", book chapter 4).

    Transition ``i`` is drawn with probability ``P(i) = p_i / sum_k p_k``, its priority ``p_i = (|delta_i| +
    eps)^alpha`` set from its last TD error (``alpha = 0``: uniform; ``eps`` keeps a transition whose error
    was 0 in play). The priorities live in a :class:`SumTree`, and in a :class:`MinTree` for the smallest.

    - A new transition has no TD error yet: it enters at the largest priority given so far (initially 1),
      so it is replayed at least once soon.
    - ``sample(B, beta)`` is stratified: ``[0, total)`` is cut into ``B`` equal segments, one uniform draw
      in each (Schaul et al., appendix B.2.1), and each draw finds its slot in the sum tree.
    - Sampling by priority changes the distribution that the expected update follows; the batch's
      importance-sampling weights ``w_i = (N * P(i))^-beta / max_j w_j`` undo it as ``beta`` goes to 1
      (the agent anneals it). The max is over the whole buffer, at its smallest probability (the min
      tree), so that weights only ever scale updates down; ``N`` cancels: ``w_i = (p_i / p_min)^-beta``.
    - After the update, :meth:`update_priorities` sets the sampled slots' priorities from their new
      TD errors.

    A slot that is not a valid sample has priority 0, so it is never drawn: the empty ones, and the slot at
    the write head once the buffer is full (its observation is the newest transition's next observation).
    ``batch.indices`` ``(B,)`` are the slots drawn, ``batch.weights`` ``(B,)`` float32 their weights.

    Args:
        alpha, eps: of the priorities; ``alpha`` in ``[0, 1]``, ``eps > 0``.
        capacity, obs_shape, obs_dtype, seed: as for :class:`ReplayBuffer`.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type = np.float32,
                 *, alpha: float = 0.6, eps: float = 1e-6, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, seed=seed, **kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.alpha, self.eps = float(alpha), float(eps)
        self.sum_tree, self.min_tree = SumTree(capacity), MinTree(capacity)
        self.max_priority = 1.0  # the largest priority given so far: new transitions get it

    @property
    def _span(self) -> int:
        """How many consecutive transitions one sample reads: 1 here, ``seq_len`` for windows."""
        return 1

    def _set_priority(self, slot: int, priority: float) -> None:
        self.sum_tree.update(slot, priority)
        self.min_tree.update(slot, priority if priority > 0 else math.inf)

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, terminated: bool,
            truncated: bool) -> None:
        """Store one transition: the sample that it completes enters at the max priority."""
        super().add(obs, action, reward, next_obs, terminated, truncated)
        if self.full:  # the slot at the write head stopped being a valid sample
            self._set_priority(self.pos, 0.0)
        if self._valid_count() >= self._span:  # the sample that ends with this transition became valid
            self._set_priority((self.pos - self._span) % self.capacity, self.max_priority)

    def sample(self, batch_size: int, beta: float = 1.0) -> Any:  # type: ignore[override]
        """``batch_size`` samples drawn by priority (stratified), with ``indices`` and IS ``weights``."""
        if self._valid_count() < self._span:
            raise ValueError(f"need at least {self._span} transition(s) to sample, the buffer holds "
                             f"{self._valid_count()}")
        total = self.sum_tree.total
        mass = (np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size)  # one per segment
        idx = self.sum_tree.find(mass)
        weights = (self.sum_tree[idx] / self.min_tree.min) ** -beta  # (p_i / p_min)^-beta, at most 1
        batch = self._gather(idx)
        batch.indices, batch.weights = idx, weights.astype(np.float32)
        return batch

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Set the priorities of the slots ``indices`` ``(B,)`` to ``(|td_errors| + eps)^alpha`` ``(B,)``.

        A slot that stopped being a valid sample since it was drawn (the write head passed it) keeps
        priority 0.
        """
        idx = np.asarray(indices, np.intp)
        priority = (np.abs(np.asarray(td_errors, np.float64)) + self.eps) ** self.alpha
        if idx.shape != priority.shape or idx.ndim != 1:
            raise ValueError(f"need one TD error per index, got shapes {idx.shape} and {priority.shape}")
        if not idx.size:
            return
        if idx.min() < 0 or idx.max() >= self.capacity:
            raise IndexError(f"slots must lie in [0, {self.capacity}), got {idx.min()}..{idx.max()}")
        if not np.isfinite(priority).all():
            raise ValueError("a TD error is not finite: the priorities would be lost")
        live = self.sum_tree[idx] > 0
        if not live.all():
            idx, priority = idx[live], priority[live]
        self.sum_tree.update(idx, priority)
        self.min_tree.update(idx, priority)
        if priority.size:
            self.max_priority = max(self.max_priority, float(priority.max()))

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The buffer's state, and the priorities (the trees' leaves; their nodes follow exactly)."""
        return {**super().state_dict(), "priorities": torch.from_numpy(self.sum_tree.values()),
                "max_priority": self.max_priority}

    def load_state_dict(self, state: dict) -> None:
        if "priorities" not in state:
            raise ValueError("this replay state has no priorities: a uniform buffer saved it")
        super().load_state_dict(state)
        priorities = state["priorities"].numpy()
        self.sum_tree.load(priorities)
        self.min_tree.load(np.where(priorities > 0, priorities, math.inf))
        self.max_priority = float(state["max_priority"])


class PrioritizedSequenceReplayBuffer(PrioritizedReplayBuffer, SequenceReplayBuffer):
    """Prioritized replay of windows (book chapter 4): :class:`PrioritizedReplayBuffer`'s sampling over the
    windows of :class:`SequenceReplayBuffer`, each window drawn by the priority kept at its start slot.

    A start is a valid sample when its whole window lies in the stored data, so the ``seq_len - 1``
    newest slots (and the write head) hold priority 0 until the data after them arrives; the window
    that ends with the newest transition enters at the max priority. The agent hands back one TD error
    per window, R2D2's mix of its steps' errors (:func:`window_td_error`; Kapturowski et al. 2019).
    ``batch.indices`` are the windows' start slots.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype | type = np.float32,
                 *, seq_len: int, state_size: int = 0, alpha: float = 0.6, eps: float = 1e-6,
                 seed: int | None = None) -> None:
        super().__init__(capacity, obs_shape, obs_dtype, alpha=alpha, eps=eps, seed=seed, seq_len=seq_len,
                         state_size=state_size)

    @property
    def _span(self) -> int:
        return self.seq_len


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
