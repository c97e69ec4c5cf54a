"""Self-check functions for the exercises of chapters 1 (attention) and 3 (actor-critic).

Each ``check_*`` function runs the reader's function on random inputs, compares it with the
companion's implementation, prints a one-line verdict, and returns ``True`` when it is right. When it
is wrong, it tries the usual mistakes and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from companion.attention import causal_mask, scaled_dot_product_attention, window_mask
from companion.buffers import gae

__all__ = ["check_attention", "check_causal_mask", "check_clipped_objective", "check_gae", "check_masked_attention",
           "check_split_heads", "check_window_mask"]


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
