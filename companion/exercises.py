"""Self-check functions for the exercises of chapters 1 (attention), 2 (TD targets), 3 (actor-critic),
4 (memory), 5 (hierarchical attention), 6 (REINFORCE for hard attention), 7 (the masked TD loss) and 8
(aggregate metrics).

Each ``check_*`` function runs the reader's function on random inputs, compares it with the
companion's implementation, prints a one-line verdict, and returns ``True`` when it is right. When it
is wrong, it tries the usual mistakes and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from companion.attention import causal_mask, scaled_dot_product_attention, window_mask
from companion.buffers import gae

__all__ = ["check_attention", "check_best_chunk_size", "check_causal_mask", "check_chunk_summaries",
           "check_clipped_objective", "check_double_dqn_target", "check_gae", "check_iqm", "check_is_weights",
           "check_masked_attention", "check_masked_td_loss", "check_memory_mask", "check_probability_of_improvement",
           "check_reinforce_gradient",
           "check_split_heads", "check_sum_tree_find", "check_target_ceiling", "check_td_targets",
           "check_window_mask"]


def _close(a: object, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a.to(b.dtype), b, atol=1e-9, rtol=1e-7)


def _run(name: str, fn: Callable[..., object], *args: Tensor) -> tuple[object, str | None]:
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, f"{name}: not implemented yet."
    except Exception as err:  # the reader's code may fail in any way; report it in one line
        return None, f"{name}: raised {type(err).__name__}: {err}"


def _verdict(name: str, result: object, expected: Tensor, mistakes: dict[str, Tensor]) -> bool:
    if _close(result, expected):
        print(f"{name}: correct.")
        return True
    if not isinstance(result, Tensor):
        print(f"{name}: expected a tensor, got {type(result).__name__}.")
        return False
    if result.shape != expected.shape:
        print(f"{name}: expected shape {tuple(expected.shape)}, got {tuple(result.shape)}.")
        return False
    for hint, wrong in mistakes.items():
        if _close(result, wrong):
            print(f"{name}: not yet. It looks like {hint}.")
            return False
    print(f"{name}: not yet; the values differ from the reference (max error "
          f"{(result.to(expected.dtype) - expected).abs().max():.3g}).")
    return False


def check_attention(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(Q, K, V) -> output``: scaled dot-product attention without a mask, ``(B, L, d)`` inputs."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 5, 8, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g,
                                                                               dtype=torch.float64)
    result, error = _run("check_attention", fn, q, k, v)
    if error:
        print(error)
        return False
    logits = q @ k.transpose(-2, -1)
    mistakes = {
        "the logits are not scaled (divide by sqrt(d_k))": torch.softmax(logits, -1) @ v,
        "the logits are divided by d_k instead of sqrt(d_k)": torch.softmax(logits / 8, -1) @ v,
        "the softmax runs over the queries (dim=-2) instead of the keys (dim=-1)":
            torch.softmax(logits / math.sqrt(8), -2) @ v,
    }
    return _verdict("check_attention", result, scaled_dot_product_attention(q, k, v)[0], mistakes)


def check_masked_attention(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(Q, K, V, mask) -> output`` with a boolean mask, True = may attend."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, 6, 8, generator=g, dtype=torch.float64), torch.randn(2, 6, 3, generator=g,
                                                                               dtype=torch.float64)
    mask = torch.rand(2, 4, 6, generator=g) > 0.5
    mask[..., 0] = True
    result, error = _run("check_masked_attention", fn, q, k, v, mask)
    if error:
        print(error)
        return False
    logits = q @ k.transpose(-2, -1) / math.sqrt(8)
    after = torch.softmax(logits, -1).masked_fill(~mask, 0.0)
    mistakes = {
        "the mask is applied after the softmax: the kept weights no longer sum to 1": after @ v,
        "the mask is inverted: True must mean 'may attend'":
            torch.softmax(logits.masked_fill(mask, float("-inf")).nan_to_num(), -1) @ v,
        "the mask is ignored": torch.softmax(logits, -1) @ v,
    }
    return _verdict("check_masked_attention", result, scaled_dot_product_attention(q, k, v, mask)[0], mistakes)


def check_causal_mask(fn: Callable[[int], Tensor]) -> bool:
    """Check ``fn(L) -> (L, L)`` boolean mask, True where position i may attend to position j."""
    for length in (1, 4, 7):
        result, error = _run("check_causal_mask", fn, length)
        if error:
            print(error)
            return False
        expected = causal_mask(length)
        if isinstance(result, Tensor) and result.shape == expected.shape and result.dtype != torch.bool:
            print(f"check_causal_mask: return a boolean tensor (dtype torch.bool), not {result.dtype}.")
            return False
        if not (isinstance(result, Tensor) and torch.equal(result, expected)):
            mistakes = {"the mask lets each position see the future, not the past (transposed)": expected.T,
                        "the mask also hides the position itself (diagonal excluded)": expected.tril(-1)}
            return _verdict("check_causal_mask", result, expected, mistakes)
    print("check_causal_mask: correct.")
    return True


def check_split_heads(fn: Callable[[Tensor, int], Tensor]) -> bool:
    """Check ``fn(x, H)``: ``(B, L, E) -> (B, H, L, E // H)``, head h holding features h*d .. (h+1)*d - 1."""
    x = torch.arange(2 * 3 * 8, dtype=torch.float64).reshape(2, 3, 8)
    result, error = _run("check_split_heads", fn, x, 2)
    if error:
        print(error)
        return False
    expected = x.view(2, 3, 2, 4).transpose(1, 2)
    mistakes = {"a reshape straight to (B, H, L, d) mixes positions and heads; view as (B, L, H, d), then transpose":
                x.reshape(2, 2, 3, 4)}
    return _verdict("check_split_heads", result, expected, mistakes)


# -- chapter 3 ----------------------------------------------------------------------------------------
def _as_tensor(result: object) -> object:
    """Accept numpy arrays and lists from the reader as well as tensors."""
    if isinstance(result, Tensor) or result is None:
        return result
    try:
        return torch.as_tensor(result, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return result


def _gae_loop(rewards: Tensor, values: Tensor, dones: Tensor, next_value: float, gamma: float, lam: float,
              mask_shift: int = 0, mask_trace: bool = True, use_lambda: bool = True) -> Tensor:
    """GAE written as a loop, with switches for the usual mistakes."""
    steps = len(rewards)
    following_values = torch.cat([values[1:], torch.tensor([next_value], dtype=values.dtype)])
    not_done = 1.0 - dones.double()
    if mask_shift:  # using done_{t+1} instead of done_t
        not_done = torch.cat([not_done[1:], torch.ones(1, dtype=not_done.dtype)])
    advantages, last = torch.zeros(steps, dtype=torch.float64), 0.0
    for t in reversed(range(steps)):
        delta = rewards[t] + gamma * not_done[t] * following_values[t] - values[t]
        last = delta + gamma * (lam if use_lambda else 1.0) * (not_done[t] if mask_trace else 1.0) * last
        advantages[t] = last
    return advantages


def check_gae(fn: Callable[..., object]) -> bool:
    """Check ``fn(rewards, values, dones, next_value, gamma, lam) -> advantages``, all ``(T,)`` for one env
    (``dones[t]`` True when step ``t`` ended its episode; ``next_value`` the value after the last step)."""
    rewards = torch.tensor([1.0, 0.0, 2.0, 1.0, -1.0, 0.5], dtype=torch.float64)
    values = torch.tensor([0.5, 1.0, 1.5, 0.2, 0.3, -0.4], dtype=torch.float64)
    dones = torch.tensor([False, False, True, False, False, False])
    gamma, lam, next_value = 0.9, 0.8, 0.7
    result, error = _run("check_gae", fn, rewards, values, dones, next_value, gamma, lam)
    if error:
        print(error)
        return False
    expected = gae(rewards[:, None], values[:, None], dones[:, None], torch.tensor([next_value], dtype=torch.float64),
                   gamma, lam)[0][:, 0]
    mistakes = {
        "the advantage runs back over the episode end: mask the recursion with (1 - done_t) too":
            _gae_loop(rewards, values, dones, next_value, gamma, lam, mask_trace=False),
        "the masks are shifted by one step: done_t, not done_{t+1}, cuts step t from the next":
            _gae_loop(rewards, values, dones, next_value, gamma, lam, mask_shift=1),
        "lambda is missing: the recursion multiplies by gamma * lambda":
            _gae_loop(rewards, values, dones, next_value, gamma, lam, use_lambda=False),
        "these are the returns A + V, not the advantages": expected + values,
    }
    return _verdict("check_gae", _as_tensor(result), expected, mistakes)


def check_window_mask(fn: Callable[[Tensor, int], object]) -> bool:
    """Check ``fn(starts, K) -> (S, S)`` booleans: step ``i`` may read step ``j`` when ``j`` is one of the last ``K``
    steps up to and including ``i``, of the same episode (``starts`` ``(S,)`` marks each episode's first step)."""
    starts = torch.tensor([True, False, False, False, True, False, False, False, False])
    result, error = _run("check_window_mask", fn, starts, 3)
    if error:
        print(error)
        return False
    expected = window_mask(starts[None], 3)[0, 0]
    if isinstance(result, Tensor) and result.shape == expected.shape and result.dtype != torch.bool:
        print(f"check_window_mask: return a boolean tensor (dtype torch.bool), not {result.dtype}.")
        return False
    if isinstance(result, Tensor) and result.shape == expected.shape and bool((result & ~causal_mask(9)).any()):
        print("check_window_mask: not yet. A step reads a later one: the future leaks into the critic "
              "(keep j <= i).")
        return False
    lag = torch.arange(9)[:, None] - torch.arange(9)[None, :]
    mistakes = {"the window is one step too long: lags 0 .. K-1 make K steps": (lag >= 0) & (lag <= 3) &
                (window_mask(starts[None], 9)[0, 0]),
                "the window crosses the episode start: a new episode reads the last one": (lag >= 0) & (lag < 3),
                "the step cannot read itself (lag 0 belongs to the window)": expected & (lag > 0)}
    if isinstance(result, Tensor) and torch.equal(result, expected):
        print("check_window_mask: correct.")
        return True
    for hint, wrong in mistakes.items():
        if isinstance(result, Tensor) and torch.equal(result, wrong):
            print(f"check_window_mask: not yet. It looks like {hint}.")
            return False
    print("check_window_mask: not yet; compare your mask with the rule above, row by row.")
    return False


def check_clipped_objective(fn: Callable[[Tensor, Tensor, float], object]) -> bool:
    """Check ``fn(ratio, advantages, eps) -> loss``: PPO's clipped surrogate as a loss to *minimise* (a scalar)."""
    ratio = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5, 0.7, 1.3], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5, -2.0, -0.5, 1.5], dtype=torch.float64)
    result, error = _run("check_clipped_objective", fn, ratio, adv, 0.2)
    if error:
        print(error)
        return False
    clipped = ratio.clamp(0.8, 1.2)
    expected = -torch.min(ratio * adv, clipped * adv).mean()
    mistakes = {"the sign is flipped: PPO maximises the surrogate, so the loss is its negative":
                torch.min(ratio * adv, clipped * adv).mean(),
                "max instead of min: the pessimistic bound is the smaller of the two":
                -torch.max(ratio * adv, clipped * adv).mean(),
                "only the clipped term: without the min, a ratio that moved the wrong way is not corrected":
                -(clipped * adv).mean(),
                "the advantage is clipped instead of the ratio": -(ratio * adv.clamp(0.8, 1.2)).mean()}
    return _verdict("check_clipped_objective", _as_tensor(result), expected, mistakes)


# --------------------------------------------------------------------------------------------------
# Chapter 4: prioritized replay and the episodic memory
# --------------------------------------------------------------------------------------------------
def _sum_tree(leaves: np.ndarray) -> np.ndarray:
    """The layout of the exercise: ``tree[1]`` is the root, node ``i`` has children ``2i`` and ``2i + 1``, and the
    ``n`` leaves (``n`` a power of two) are ``tree[n:2n]``; ``tree[0]`` is unused."""
    n = len(leaves)
    tree = np.zeros(2 * n)
    tree[n:] = leaves
    for i in range(n - 1, 0, -1):
        tree[i] = tree[2 * i] + tree[2 * i + 1]
    return tree


def check_sum_tree_find(fn: Callable[[np.ndarray, float], object]) -> bool:
    """Check ``fn(tree, u) -> leaf index``: descend a sum tree (layout of ``_sum_tree``) to the leaf ``i`` whose
    interval ``[c_{i-1}, c_i)`` of the cumulative priorities holds ``u``, for ``0 <= u < tree[1]``."""
    rng = np.random.default_rng(0)
    cases = []
    for n in (4, 8, 16):
        leaves = rng.integers(0, 5, size=n).astype(float)  # integer priorities: u can sit exactly on a boundary
        leaves[0] = max(leaves[0], 1.0)
        cumulative = np.cumsum(leaves)
        tree = _sum_tree(leaves)
        boundaries = [c for c in cumulative[:-1] if c < tree[1]]
        for u in [*rng.uniform(0, tree[1], size=6), *boundaries]:  # inside intervals, and on boundaries
            cases.append((tree, float(u), int(np.searchsorted(cumulative, u, side="right"))))
    for tree, u, expected in cases:
        result, error = _run("check_sum_tree_find", fn, tree.copy(), u)
        if error:
            print(error)
            return False
        if not isinstance(result, int | np.integer):
            print(f"check_sum_tree_find: expected an int (a leaf index), got {type(result).__name__}.")
            return False
        if int(result) == expected:
            continue
        n = len(tree) // 2
        leaves = tree[n:]
        cumulative = np.cumsum(leaves)
        if int(result) == expected + n:
            hint = "the node's index in the tree array, not the leaf's: subtract n (the leaves are tree[n:2n])"
        elif int(result) == int(np.searchsorted(cumulative, u, side="left")):
            hint = ("u on a boundary goes to the left: a leaf's interval is [c_(i-1), c_i), so go left only when "
                    "u < tree[left]")
        else:
            hint = "you forgot to subtract the left child's sum when going right" if u >= tree[2] else ""
        print(f"check_sum_tree_find: not yet (u = {u:g}, leaves {leaves.tolist()}: expected leaf {expected}, got "
              f"{int(result)}){'. It looks like ' + hint if hint else ''}.")
        return False
    print("check_sum_tree_find: correct.")
    return True


def check_is_weights(fn: Callable[[np.ndarray, np.ndarray, float], object]) -> bool:
    """Check ``fn(priorities, indices, beta) -> weights``: prioritized replay's importance-sampling weights for the
    sampled ``indices`` of a buffer whose ``N`` entries have ``priorities`` (already ``p_i^alpha``):
    ``w_i = (N P(i))^-beta / max_j w_j`` with ``P(i) = p_i / sum_k p_k`` and the max over the whole buffer."""
    priorities = np.array([0.5, 2.0, 1.0, 4.0, 0.25, 1.5])
    indices = np.array([1, 3, 3, 2])
    result, error = _run("check_is_weights", fn, priorities.copy(), indices.copy(), 0.6)
    if error:
        print(error)
        return False
    probs = priorities / priorities.sum()
    raw = (len(priorities) * probs) ** -0.6
    expected = raw[indices] / raw.max()
    mistakes = {"the weights are normalised by the batch's largest weight, a common convention but not this "
                "chapter's (the buffer's largest, so that no weight exceeds 1 whatever the batch)":
                raw[indices] / raw[indices].max(),
                "the exponent has the wrong sign: frequent entries must weigh less, (N P)^-beta":
                (len(priorities) * probs[indices]) ** 0.6 / ((len(priorities) * probs) ** 0.6).max(),
                "the weights are not normalised (divide by the largest, so that they only scale the step down)":
                raw[indices]}
    result = np.asarray(result, dtype=float) if isinstance(result, np.ndarray | list | tuple) else result
    if not isinstance(result, np.ndarray) or result.shape != expected.shape:
        print(f"check_is_weights: expected an array of shape {expected.shape}, got {result!r}.")
        return False
    if np.allclose(result, expected):
        print("check_is_weights: correct.")
        return True
    for hint, wrong in mistakes.items():
        if np.allclose(result, wrong):
            print(f"check_is_weights: not yet. It looks like {hint}.")
            return False
    print(f"check_is_weights: not yet; expected {np.round(expected, 4).tolist()}, got {np.round(result, 4).tolist()}.")
    return False


def check_memory_mask(fn: Callable[[Tensor, int], object]) -> bool:
    """Check ``fn(starts, M) -> (S, S)`` booleans: step ``i`` may read the memory slot of step ``j`` when ``j`` is one
    of the ``M`` steps *before* ``i`` (``1 <= i - j <= M``), of the same episode (``starts`` ``(S,)`` marks each
    episode's first step)."""
    starts = torch.tensor([True, False, False, False, False, True, False, False, False, False])
    result, error = _run("check_memory_mask", fn, starts, 3)
    if error:
        print(error)
        return False
    expected = window_mask(starts[None], 4, min_lag=1)[0, 0]
    if not isinstance(result, Tensor) or result.shape != expected.shape or result.dtype != torch.bool:
        print(f"check_memory_mask: expected a boolean tensor of shape {tuple(expected.shape)}, got "
              f"{getattr(result, 'dtype', type(result).__name__)} {tuple(getattr(result, 'shape', ()))}.")
        return False
    if bool((result & ~causal_mask(10)).any()):
        print("check_memory_mask: not yet. A step reads a later one: the future leaks into the memory (keep j < i).")
        return False
    lag = torch.arange(10)[:, None] - torch.arange(10)[None, :]
    same = window_mask(starts[None], 10)[0, 0]
    mistakes = {"the step reads its own slot (lag 0): the memory holds the steps before it, and the current "
                "observation reaches the heads directly": (lag >= 0) & (lag <= 3) & same,
                "the memory is one step too short: lags 1 .. M make M slots": (lag >= 1) & (lag < 3) & same,
                "the memory crosses the episode start: a new episode reads the last one": (lag >= 1) & (lag <= 3)}
    if torch.equal(result, expected):
        print("check_memory_mask: correct.")
        return True
    for hint, wrong in mistakes.items():
        if torch.equal(result, wrong):
            print(f"check_memory_mask: not yet. It looks like {hint}.")
            return False
    print("check_memory_mask: not yet; compare your mask with the rule above, row by row.")
    return False


def check_best_chunk_size(fn: Callable[[int, int], object]) -> bool:
    """Chapter 5: ``fn(L, k)`` returns the whole chunk size ``c`` (``1 <= c <= L``) that makes a hierarchical read's
    cost ``L / c + k c`` (summaries scored, plus keys read inside the kept chunks) smallest; the lower ``c`` on a
    tie."""
    name = "best chunk size"
    cases = [(64, 1), (1024, 2), (4096, 2), (16_384, 4), (1000, 3), (10, 10), (6, 1)]  # (6, 1): c = 2 and 3 tie
    for length, k in cases:
        costs = [length / c + k * c for c in range(1, length + 1)]
        expected = 1 + int(np.argmin(costs))
        result, error = _run(name, fn, length, k)
        if error:
            print(error)
            return False
        if result == expected:
            continue
        mistakes = {"sqrt(L): k left out": round(math.sqrt(length)), "sqrt(k L)": round(math.sqrt(k * length)),
                    "L / k": length // k}
        named = [m for m, value in mistakes.items() if result == value and value != expected]
        print(f"{name}: for L = {length}, k = {k} expected {expected}, got {result}"
              + (f" (looks like {named[0]})" if named else "") + ".")
        return False
    print(f"{name}: correct.")
    return True


def check_chunk_summaries(fn: Callable[[Tensor, int], object]) -> bool:
    """Chapter 5: ``fn(keys, c)`` returns each chunk's summary key, the mean of its keys: ``keys`` ``(S, d)``,
    chunk ``g`` holding keys ``g c .. g c + c - 1`` (the last chunk may be shorter); returns ``(ceil(S / c), d)``."""
    name = "chunk summaries"
    gen = torch.Generator().manual_seed(5)
    keys, c = torch.randn(11, 3, generator=gen, dtype=torch.float64), 4
    chunks = [keys[g:g + c] for g in range(0, len(keys), c)]
    expected = torch.stack([chunk.mean(0) for chunk in chunks])
    result, error = _run(name, fn, keys.clone(), c)
    if error:
        print(error)
        return False
    result = _as_tensor(result)
    if _close(result, expected[:-1]):
        print(f"{name}: not yet. It looks like the short last chunk left out.")
        return False
    mistakes = {"sums, not means": torch.stack([chunk.sum(0) for chunk in chunks]),
                "the short last chunk divided by c, not by its length": torch.stack([chunk.sum(0) / c
                                                                                     for chunk in chunks])}
    return _verdict(name, result, expected, mistakes)


# --------------------------------------------------------------------------------------------------
# Chapter 2: TD targets
# --------------------------------------------------------------------------------------------------
def _td_case() -> tuple[Tensor, ...]:
    rewards = torch.tensor([1.0, 1.0, 0.5, 1.0, -1.0, 1.0], dtype=torch.float64)
    next_online = torch.tensor([[0.2, 1.5], [2.0, 0.1], [0.3, 0.4], [1.0, 3.0], [0.5, 0.2], [2.5, 2.0]],
                               dtype=torch.float64)  # Q_theta(s', .)
    next_target = torch.tensor([[1.0, 0.5], [0.7, 2.2], [0.9, 0.1], [2.0, 1.2], [0.3, 0.8], [1.1, 1.9]],
                               dtype=torch.float64)  # Q_theta-(s', .)
    terminated = torch.tensor([False, True, False, False, False, False])
    truncated = torch.tensor([False, False, False, True, False, False])
    return rewards, next_online, next_target, terminated, truncated


def check_td_targets(fn: Callable[..., object]) -> bool:
    """Chapter 2: ``fn(rewards, next_q, terminated, truncated, gamma) -> targets``, DQN's targets
    ``r + gamma (1 - terminated) max_a' next_q[:, a']`` for a batch of transitions (``next_q`` ``(B, A)``)."""
    name = "check_td_targets"
    rewards, _, next_q, terminated, truncated = _td_case()
    gamma = 0.9
    result, error = _run(name, fn, rewards, next_q, terminated, truncated, gamma)
    if error:
        print(error)
        return False
    best = next_q.max(1).values
    expected = rewards + gamma * (1.0 - terminated.double()) * best
    mistakes = {"a truncated transition is treated as terminated: the time limit is not the end of the task, "
                "so it still bootstraps": rewards + gamma * (1.0 - (terminated | truncated).double()) * best,
                "(1 - terminated) is missing: a terminal transition has no future": rewards + gamma * best,
                "the bootstrap is the mean, not the max, over next actions":
                rewards + gamma * (1.0 - terminated.double()) * next_q.mean(1)}
    return _verdict(name, _as_tensor(result), expected, mistakes)


def check_double_dqn_target(fn: Callable[..., object]) -> bool:
    """Chapter 2: ``fn(rewards, next_online, next_target, terminated, gamma) -> targets``, Double DQN's
    ``r + gamma (1 - terminated) Q_target(s', argmax_a' Q_online(s', a'))`` (both ``(B, A)``)."""
    name = "check_double_dqn_target"
    rewards, next_online, next_target, terminated, _ = _td_case()
    gamma = 0.9
    result, error = _run(name, fn, rewards, next_online, next_target, terminated, gamma)
    if error:
        print(error)
        return False
    not_done = 1.0 - terminated.double()
    chosen = next_online.argmax(1, keepdim=True)
    expected = rewards + gamma * not_done * next_target.gather(1, chosen)[:, 0]
    mistakes = {"the roles are swapped: the online network chooses the action, the target network values it":
                rewards + gamma * not_done * next_online.gather(1, next_target.argmax(1, keepdim=True))[:, 0],
                "this is plain DQN's target: the target network both chooses and values":
                rewards + gamma * not_done * next_target.max(1).values,
                "(1 - terminated) is missing: a terminal transition has no future":
                rewards + gamma * next_target.gather(1, chosen)[:, 0]}
    return _verdict(name, _as_tensor(result), expected, mistakes)


def check_target_ceiling(fn: Callable[..., object]) -> bool:
    """Chapter 2: ``fn(copies, gamma) -> ceiling``, the most the target network's values can be after
    ``copies`` ``(B,)`` (long) hard copies of a trained network, with rewards at most 1 and values starting
    at 0: ``1 + gamma + ... + gamma^(n-1) = (1 - gamma^n) / (1 - gamma)`` (float ``(B,)``)."""
    name = "check_target_ceiling"
    copies = torch.tensor([0, 1, 2, 10, 100, 500])
    gamma = 0.99
    result, error = _run(name, fn, copies.clone(), gamma)
    if error:
        print(error)
        return False
    n = copies.double()
    expected = (1 - gamma**n) / (1 - gamma)
    mistakes = {"one term too many: that is the online network, regressing towards the next copy":
                (1 - gamma ** (n + 1)) / (1 - gamma),
                "the limit 1/(1 - gamma), which no finite number of copies reaches":
                torch.full_like(n, 1 / (1 - gamma)),
                "the rewards are not discounted: each copy adds gamma^k, not 1": n,
                "the terms are gamma^1 .. gamma^n: the first copy adds the reward itself, 1":
                gamma * (1 - gamma**n) / (1 - gamma)}
    return _verdict(name, _as_tensor(result), expected, mistakes)


# --------------------------------------------------------------------------------------------------
# Chapter 6: REINFORCE for hard attention
# --------------------------------------------------------------------------------------------------
def check_reinforce_gradient(fn: Callable[..., object]) -> bool:
    """Chapter 6: ``fn(scores, location, reward, baseline) -> grad``, the one-sample REINFORCE estimate of the
    gradient of ``E_{i ~ softmax(scores)}[R(i)]`` with respect to ``scores`` ``(L,)``: ``(R - b)`` times the
    gradient of ``log softmax(scores)[location]``."""
    name = "check_reinforce_gradient"
    scores = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    location, reward, baseline = 3, 2.0, 0.5
    result, error = _run(name, fn, scores.clone(), location, reward, baseline)
    if error:
        print(error)
        return False
    probs = torch.softmax(scores, 0)
    onehot = torch.nn.functional.one_hot(torch.tensor(location), 5).double()
    expected = (reward - baseline) * (onehot - probs)
    mistakes = {"the baseline is added, not subtracted": (reward + baseline) * (onehot - probs),
                "the baseline is missing": reward * (onehot - probs),
                "the softmax's own term is missing: d log g_i / d e_j = 1[i = j] - g_j":
                (reward - baseline) * onehot,
                "this is the gradient of g_i, not of log g_i: divide by g_i":
                (reward - baseline) * probs[location] * (onehot - probs)}
    return _verdict(name, _as_tensor(result), expected, mistakes)


# --------------------------------------------------------------------------------------------------
# Chapter 7: the TD loss over a window's positions
# --------------------------------------------------------------------------------------------------
def check_masked_td_loss(fn: Callable[..., object]) -> bool:
    """Chapter 7: ``fn(q_taken, targets, mask) -> loss``, the mean squared TD error over the positions of a
    batch of windows where ``mask`` ``(B, T)`` is True (positions after a window's episode ended are padding)."""
    name = "check_masked_td_loss"
    gen = torch.Generator().manual_seed(7)
    q_taken = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    targets = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5, [True, True, True, True, False]])
    result, error = _run(name, fn, q_taken.clone(), targets.clone(), mask.clone())
    if error:
        print(error)
        return False
    squared = (q_taken - targets) ** 2
    m = mask.double()
    expected = (squared * m).sum() / m.sum()
    mistakes = {"the padding counts: average over the valid positions only": squared.mean(),
                "the masked positions are zeroed but still counted in the mean": (squared * m).mean(),
                "a mean of per-window means: each valid position should weigh the same":
                ((squared * m).sum(1) / m.sum(1)).mean(),
                "a sum, not a mean": (squared * m).sum()}
    return _verdict(name, _as_tensor(result), expected, mistakes)


# --------------------------------------------------------------------------------------------------
# Chapter 8: aggregate metrics over runs and tasks
# --------------------------------------------------------------------------------------------------
def _scores_case() -> tuple[Tensor, Tensor]:
    """Two score matrices ``(runs, tasks)``: X (3 runs x 5 tasks) and Y (4 runs x 5 tasks), with a tie on each
    of three tasks.

    Chosen so that every mistake the checks name gives a value of its own: the IQM, the median, the mean, the
    quarter rounded up, each task's IQM averaged, the IQM of the per-task means; P(X > Y) with ties as halves,
    as 0 or 1, the fraction of tasks won, runs paired across tasks, P(Y > X).
    """
    x = torch.tensor([[0.3, 0.5, 1.9, 1.9, 2.0], [0.0, 0.7, 0.3, 1.3, 1.5], [1.3, 1.2, 0.1, 1.9, 2.0]],
                     dtype=torch.float64)
    y = torch.tensor([[1.0, 0.5, 0.3, 0.6, 0.6], [1.6, 1.9, 1.0, 0.7, 1.5], [1.8, 1.8, 1.6, 1.0, 0.9],
                      [1.2, 0.4, 1.3, 1.7, 1.3]], dtype=torch.float64)
    return x, y


def check_iqm(fn: Callable[[Tensor], object]) -> bool:
    """Chapter 8: ``fn(scores) -> iqm``, the interquartile mean of a ``(runs, tasks)`` matrix: all ``n`` values
    pooled and sorted, ``floor(n / 4)`` dropped at each end, the rest averaged (as ``rliable``'s
    ``aggregate_iqm``)."""
    name = "check_iqm"
    x, _ = _scores_case()
    result, error = _run(name, fn, x.clone())
    if error:
        print(error)
        return False
    ordered = x.flatten().sort().values
    k = len(ordered) // 4
    expected = ordered[k:len(ordered) - k].mean()
    per_task = x.sort(0).values[1:-1].mean(0).mean()  # each task's median of its 3 runs, then averaged
    task_means = x.mean(0).sort().values
    mistakes = {"each task's median over its runs, averaged over tasks: the IQM pools runs and tasks first":
                per_task,
                "the mean of all values: nothing trimmed": x.mean(),
                "the median, not the interquartile mean": ordered.median(),
                "an IQM of the per-task means: pool the runs, do not average them first":
                task_means[len(task_means) // 4:len(task_means) - len(task_means) // 4].mean(),
                "a quarter rounded up, not down: floor(n / 4) values go at each end":
                ordered[math.ceil(len(ordered) / 4):len(ordered) - math.ceil(len(ordered) / 4)].mean()}
    return _verdict(name, _as_tensor(result), expected, mistakes)


def check_probability_of_improvement(fn: Callable[[Tensor, Tensor], object]) -> bool:
    """Chapter 8: ``fn(x, y) -> p``, P(X > Y) for score matrices ``x`` ``(N, M)`` and ``y`` ``(N', M)`` on the
    same ``M`` tasks: on each task, the fraction of the ``N * N'`` run pairs in which X's run scores higher
    (a tie counts one half), then the mean over tasks (Agarwal et al. 2021)."""
    name = "check_probability_of_improvement"
    x, y = _scores_case()
    result, error = _run(name, fn, x.clone(), y.clone())
    if error:
        print(error)
        return False
    greater = (x[:, None, :] > y[None, :, :]).double()  # (N, N', M)
    ties = (x[:, None, :] == y[None, :, :]).double()
    expected = (greater + 0.5 * ties).mean((0, 1)).mean()
    mistakes = {"ties count 0: a tie is half a win for each": greater.mean((0, 1)).mean(),
                "ties count 1: a tie is half a win for each": (greater + ties).mean((0, 1)).mean(),
                "the fraction of tasks where X's mean is higher: compare runs, not means":
                (x.mean(0) > y.mean(0)).double().mean(),
                "runs compared across tasks: pair runs on the same task only":
                ((x.flatten()[:, None] > y.flatten()[None, :]).double()
                 + 0.5 * (x.flatten()[:, None] == y.flatten()[None, :]).double()).mean(),
                "P(Y > X), not P(X > Y)": 1 - (greater + 0.5 * ties).mean((0, 1)).mean()}
    return _verdict(name, _as_tensor(result), expected, mistakes)
