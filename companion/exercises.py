"""Self-check functions for the exercises of chapter 1.

Each ``check_*`` function runs the reader's function on random inputs, compares it with the
companion's implementation, prints a one-line verdict, and returns ``True`` when it is right. When it
is wrong, it tries the usual mistakes and names the one that matches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from companion.attention import causal_mask, scaled_dot_product_attention

__all__ = ["check_attention", "check_causal_mask", "check_masked_attention", "check_split_heads"]


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
