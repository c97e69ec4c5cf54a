"""Attention from first principles (chapter 1 of the book).

Notation, kept in every chapter:

=======  ==========================================================================
``Q``    queries, shape ``(..., L, d_k)``: ``L`` positions that ask
``K``    keys, shape ``(..., S, d_k)``: ``S`` positions that can be found
``V``    values, shape ``(..., S, d_v)``: what each found position hands back
``d_k``  the query/key width; ``d_v`` the value width
``H``    the number of heads; ``E`` the model width, ``E = H * d_head``
=======  ==========================================================================

Scaled dot-product attention (Vaswani et al. 2017, eq. 1)::

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

Masks follow one convention throughout the course: a **boolean mask is True where a query may attend
to a key**, the convention of ``torch.nn.functional.scaled_dot_product_attention``. (``nn.MultiheadAttention``'s
``key_padding_mask`` uses the opposite one: True means *ignore*.) A float mask is *added* to the
logits, so ``-inf`` removes a key and ``0`` keeps it.

A query whose keys are all masked attends to nothing: its weights are all zero and its output is the
zero vector (for :class:`MultiHeadAttention`, the output projection's bias). No NaN appears, in the
forward pass or in gradients. Softmax over an empty set is undefined; zero is the choice that lets a
fully padded sequence pass through a network harmlessly, and it is what PyTorch's fused kernel returns.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AdditiveAttention",
    "EpisodicMemory",
    "LearnedPositionalEmbedding",
    "MemoryCache",
    "MultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "causal_mask",
    "masked_softmax",
    "padding_mask",
    "scaled_dot_product_attention",
    "sinusoidal_positional_encoding",
    "window_mask",
]


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------
def causal_mask(length: int, *, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(L, L)`` mask that lets position ``i`` attend to positions ``j <= i`` only.

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    if length < 1:
        raise ValueError(f"causal_mask: length must be >= 1, got {length}")
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor | list[int], max_len: int | None = None) -> Tensor:
    """Boolean ``(B, max_len)`` mask, True at the real (non-padding) positions of each sequence.

    To mask *keys* with it, insert the query (and head) axes: ``mask[:, None, :]`` broadcasts against
    scores ``(B, L, S)``, ``mask[:, None, None, :]`` against ``(B, H, L, S)``.

    >>> padding_mask([1, 3], 4).int()
    tensor([[1, 0, 0, 0],
            [1, 1, 1, 0]], dtype=torch.int32)
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"padding_mask: lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    longest = int(lengths.max()) if lengths.numel() else 0
    max_len = longest if max_len is None else max_len
    if (lengths < 0).any() or longest > max_len:
        raise ValueError(f"padding_mask: lengths must lie in [0, max_len={max_len}], got {lengths.tolist()}")
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def masked_softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Softmax over the last axis of ``scores`` ``(..., L, S)``, honouring ``mask``.

    Args:
        scores: attention logits ``(..., L, S)``.
        mask: boolean (True = may attend) or float (added to the logits), broadcastable to ``scores``.

    Returns:
        Weights ``(..., L, S)``: each row sums to 1, masked entries are exactly 0, and a row whose keys
        are all masked is all zeros (not NaN), with zero gradient.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    fully_masked = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., L, 1)
    if not fully_masked.any():
        return torch.softmax(scores, dim=-1)
    # Give such rows finite logits before the softmax, so that neither its value nor its gradient is NaN.
    weights = torch.softmax(scores.masked_fill(fully_masked, 0.0), dim=-1)
    return weights.masked_fill(fully_masked, 0.0)


# --------------------------------------------------------------------------------------------------
# Scaled dot-product attention
# --------------------------------------------------------------------------------------------------
def _check_qkv(fn: str, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> None:
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            f"{fn}: query, key and value need at least 2 dims (..., L, d); got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"{fn}: query (..., L, d_k) and key (..., S, d_k) must share d_k; got query {tuple(query.shape)} "
            f"and key {tuple(key.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"{fn}: key (..., S, d_k) and value (..., S, d_v) must share S; got key {tuple(key.shape)} "
            f"and value {tuple(value.shape)}"
        )
    try:
        batch = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{fn}: the batch dims of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
            f"{tuple(value.shape)} do not broadcast"
        ) from None
    if mask is not None:
        scores_shape = (*batch, query.shape[-2], key.shape[-2])
        try:
            if torch.broadcast_shapes(mask.shape, scores_shape) != torch.Size(scores_shape):
                raise RuntimeError
        except RuntimeError:
            raise ValueError(
                f"{fn}: mask of shape {tuple(mask.shape)} does not broadcast to the scores (..., L, S) = "
                f"{scores_shape}"
            ) from None


def scaled_dot_product_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out for reading (book section 1.2).

    Args:
        query: ``(..., L, d_k)``.
        key: ``(..., S, d_k)``.
        value: ``(..., S, d_v)``.
        mask: boolean (True = may attend) or additive float, broadcastable to ``(..., L, S)``.
        scale: multiplies the logits; default ``1 / sqrt(d_k)``.

    Returns:
        ``(output, weights)``: output ``(..., L, d_v)`` and weights ``(..., L, S)``. Leading (batch,
        head) dims broadcast between the three inputs.
    """
    _check_qkv("scaled_dot_product_attention", query, key, value, mask)
    d_k = query.shape[-1]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale  # (..., L, S)
    weights = masked_softmax(scores, mask)  # (..., L, S)
    return weights @ value, weights  # (..., L, d_v), (..., L, S)


def _probe_fused_masked_rows() -> bool:
    """Whether this torch's fused attention returns zeros (not NaN) for a query with every key masked."""
    x = torch.ones(1, 1, 1)
    out = F.scaled_dot_product_attention(x, x, x, attn_mask=torch.zeros(1, 1, dtype=torch.bool))
    return bool(out.eq(0).all())


_FUSED_ZEROES_MASKED_ROWS = _probe_fused_masked_rows()


# --------------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2), batch first.

    Each of ``H`` heads projects queries, keys and values to ``d_head = E / H`` dims, attends, and the
    heads' outputs are concatenated and projected back to ``E``::

        head_h = Attention(Q W_h^Q, K W_h^K, V W_h^V);  MHA(Q, K, V) = concat(head_1..head_H) W^O

    Two paths compute the same thing. With ``need_weights=True`` the manual path runs
    :func:`scaled_dot_product_attention` and returns the per-head weights. Without, the fast path calls
    ``torch.nn.functional.scaled_dot_product_attention``, which uses fused kernels where it can.

    Args:
        embed_dim: ``E``, the width of queries and of the output.
        num_heads: ``H``; must divide ``embed_dim``.
        kdim, vdim: widths of the keys and values fed in (default ``E``).
        bias: whether the four projections have biases.
        dropout: dropout on the attention weights, in training mode only.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim, self.dropout = kdim or embed_dim, vdim or embed_dim, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, len, d_head)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> None:
        name = type(self).__name__
        expected = {"query": (query, self.embed_dim, "E"), "key": (key, self.kdim, "kdim"),
                    "value": (value, self.vdim, "vdim")}
        for arg, (x, width, what) in expected.items():
            if x.dim() != 3 or x.shape[-1] != width:
                raise ValueError(f"{name}: {arg} must be (B, len, {what}={width}) (batch first); "
                                 f"got shape {tuple(x.shape)}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(f"{name}: query (B, L, .), key (B, S, .) and value (B, S, .) disagree on B or S: "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if mask is not None:
            scores = (query.shape[0], self.num_heads, query.shape[1], key.shape[1])
            try:
                ok = torch.broadcast_shapes(mask.shape, scores) == torch.Size(scores)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                                 f"(B, H, L, S) = {scores}; for key padding use padding_mask(...)[:, None, None, :]")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` ``(B, L, E)`` to ``key`` ``(B, S, kdim)`` / ``value`` ``(B, S, vdim)``.

        Args:
            mask: boolean (True = may attend) or additive float, broadcastable to ``(B, H, L, S)``:
                ``causal_mask(L)`` as ``(L, S)``, key padding as ``(B, 1, 1, S)``.
            need_weights: also return the per-head weights ``(B, H, L, S)`` (before dropout). This takes
                the manual path.

        Returns:
            ``(output, weights)``: output ``(B, L, E)``; weights ``(B, H, L, S)`` or ``None``.
        """
        self._check_inputs(query, key, value, mask)
        q = self._split_heads(self.q_proj(query))  # (B, H, L, d_head)
        k, v = self.project_key_value(key, value)  # (B, H, S, d_head) each
        return self._attend(q, k, v, mask, need_weights)

    def project_key_value(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Keys ``(B, S, kdim)`` and values ``(B, S, vdim)`` projected and split into heads, ``(B, H, S, d_head)``
        each. An agent that attends over its past caches these, so that a step projects only its own."""
        return self._split_heads(self.k_proj(key)), self._split_heads(self.v_proj(value))

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
               need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` ``(B, L, E)`` over keys and values already projected by
        :meth:`project_key_value` (``(B, H, S, d_head)``, e.g. from a cache); ``mask`` and the returns as in
        :meth:`forward`."""
        return self._attend(self._split_heads(self.q_proj(query)), k, v, mask, need_weights)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """Heads already split: ``q`` ``(B, H, L, d_head)``, ``k``/``v`` ``(B, H, S, d_head)``."""
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:  # manual path: the weights are there to look at
            heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, L, d_head), (B, H, L, S)
            if dropout_p > 0:
                heads = F.dropout(weights, dropout_p) @ v
        else:  # fast path: fused kernels, no weights materialised where avoidable
            weights = None
            heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            if mask is not None and not _FUSED_ZEROES_MASKED_ROWS:
                fully_masked = (~mask if mask.dtype == torch.bool else torch.isneginf(mask)).all(-1, keepdim=True)
                heads = heads.masked_fill(fully_masked, 0.0)
        batch, _, length, _ = heads.shape
        merged = heads.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, L, E)
        return self.out_proj(merged), weights

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A copy of a batch-first ``nn.MultiheadAttention``'s weights, for checking one against the other."""
        if not module.batch_first:
            raise ValueError("from_torch expects nn.MultiheadAttention(..., batch_first=True)")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("from_torch does not support add_bias_kv or add_zero_attn")
        bias = module.in_proj_bias is not None
        mha = cls(module.embed_dim, module.num_heads, kdim=module.kdim, vdim=module.vdim, bias=bias,
                  dropout=module.dropout)
        e = module.embed_dim
        if module.in_proj_weight is not None:  # packed (3E, E) when kdim == vdim == E
            w_q, w_k, w_v = module.in_proj_weight.detach().split(e)
        else:
            w_q, w_k, w_v = (module.q_proj_weight.detach(), module.k_proj_weight.detach(),
                             module.v_proj_weight.detach())
        with torch.no_grad():
            for proj, weight, i in ((mha.q_proj, w_q, 0), (mha.k_proj, w_k, 1), (mha.v_proj, w_v, 2)):
                proj.weight.copy_(weight)
                if bias:
                    proj.bias.copy_(module.in_proj_bias[i * e:(i + 1) * e])
            mha.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                mha.out_proj.bias.copy_(module.out_proj.bias)
        return mha.to(module.out_proj.weight.device, module.out_proj.weight.dtype)


# --------------------------------------------------------------------------------------------------
# Additive attention
# --------------------------------------------------------------------------------------------------
class AdditiveAttention(nn.Module):
    """Additive ("concat") attention of Bahdanau et al. 2015: ``score(q, k) = w^T tanh(W_q q + W_k k)``.

    It needs no shared width between queries and keys, only a hidden width. DARQN's soft attention
    (chapter 6) is this, with the LSTM state as query and CNN locations as keys and values.

    Args:
        query_dim: width of the queries ``d_q``.
        key_dim: width of the keys ``d_k``.
        hidden_dim: width of the ``tanh`` layer.
        bias: bias in ``W_q`` (a bias in ``W_k`` would only duplicate it).
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.w_query = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.w_key = nn.Linear(key_dim, hidden_dim, bias=False)
        self.w_score = nn.Linear(hidden_dim, 1, bias=False)

    def scores(self, query: Tensor, key: Tensor) -> Tensor:
        """Logits ``(..., L, S)`` for queries ``(..., L, d_q)`` and keys ``(..., S, d_k)``."""
        hidden = torch.tanh(self.w_query(query).unsqueeze(-2) + self.w_key(key).unsqueeze(-3))  # (..., L, S, hid)
        return self.w_score(hidden).squeeze(-1)  # (..., L, S)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend from ``query`` ``(..., L, d_q)`` over ``key`` ``(..., S, d_k)`` / ``value`` ``(..., S, d_v)``.

        Returns ``(output (..., L, d_v), weights (..., L, S))``; ``mask`` as in :func:`masked_softmax`.
        """
        name = type(self).__name__
        if query.dim() < 2 or query.shape[-1] != self.query_dim or key.dim() < 2 or key.shape[-1] != self.key_dim:
            raise ValueError(f"{name}: expected query (..., L, {self.query_dim}) and key (..., S, {self.key_dim}); "
                             f"got {tuple(query.shape)} and {tuple(key.shape)}")
        if value.dim() < 2 or value.shape[-2] != key.shape[-2]:
            raise ValueError(f"{name}: key (..., S, d_k) and value (..., S, d_v) must share S; got "
                             f"{tuple(key.shape)} and {tuple(value.shape)}")
        weights = masked_softmax(self.scores(query, key), mask)  # (..., L, S)
        return weights @ value, weights


# --------------------------------------------------------------------------------------------------
# A transformer block, and attention over a sliding window of the past
# --------------------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` (the GPT-2 arrangement;
    pre-norm keeps the residual path an identity, which makes deep stacks train without warm-up).

    :meth:`forward` reads a whole sequence at once (training); :meth:`step` computes one new position
    from cached keys and values of the earlier ones (acting), and equals the matching row of
    :meth:`forward` under the same mask. SA-DQN (chapter 7) and the attention actor-critic (chapter 3)
    are built from it.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, E)`` -> ``(B, T, E)``, and the weights ``(B, H, T, T)`` if asked for."""
        h = self.norm1(x)
        attended, weights = self.attention(h, h, h, mask=mask, need_weights=need_weights)
        x = x + self.dropout(attended)
        return x + self.mlp(self.norm2(x)), weights

    def step(self, x: Tensor, past_k: Tensor, past_v: Tensor, mask: Tensor | None = None,
             need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """One new position ``x`` ``(B, E)`` attending over cached ``past_k``/``past_v`` ``(B, H, S, d_head)``
        and itself (the last of ``S + 1`` keys).

        Args:
            mask: boolean or additive float, broadcastable to ``(B, H, 1, S + 1)``.

        Returns:
            ``(out (B, E), k (B, H, 1, d_head), v (B, H, 1, d_head), weights (B, H, 1, S + 1) or None)``:
            the new position's output, and its key and value for the cache.
        """
        h = self.norm1(x)[:, None]  # (B, 1, E)
        k, v = self.attention.project_key_value(h, h)  # (B, H, 1, d_head)
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, S+1, d_head)
        attended, weights = self.attention.attend(h, keys, values, mask, need_weights)  # (B, 1, E)
        x = x + self.dropout(attended[:, 0])
        return x + self.mlp(self.norm2(x)), k, v, weights


def window_mask(episode_starts: Tensor, window: int, lag_bias: Tensor | None = None, min_lag: int = 0) -> Tensor:
    """The mask of causal attention over a sliding window that never crosses an episode start.

    Position ``i`` may attend to ``j`` when ``min_lag <= i - j < window`` and no episode starts in ``(j, i]``
    (``min_lag = 1``: the past only, as an episodic memory reads it).
    With ``lag_bias`` ``(H, window)``, the allowed entries carry ``lag_bias[h, i - j]`` (a learned bias per
    head and lag, which leaves keys independent of where they sit, so they can be cached) and the others
    ``-inf``; without, the mask is boolean.

    Args:
        episode_starts: ``(B, S)`` bool, True where a position is the first of its episode.

    Returns:
        ``(B, 1, S, S)`` bool, or ``(B, H, S, S)`` float with ``lag_bias``.
    """
    length = episode_starts.shape[-1]
    positions = torch.arange(length, device=episode_starts.device)
    lag = positions[:, None] - positions[None, :]  # (S, S): i - j
    episode = episode_starts.long().cumsum(-1)  # (B, S): an episode's positions share a number
    allowed = (lag >= min_lag) & (lag < window) & (episode[:, :, None] == episode[:, None, :])  # (B, S, S)
    if lag_bias is None:
        return allowed[:, None]
    bias = lag_bias[:, lag.clamp(0, window - 1)]  # (H, S, S)
    return bias[None].masked_fill(~allowed[:, None], float("-inf"))  # (B, H, S, S)


class EpisodicMemory(nn.Module):
    """A key-value memory of the episode's past steps, read by attention (book chapter 4).

    Every step ``t`` writes one slot ``m_t`` ``(E,)`` (the caller decides what it holds: an embedding of
    ``(o_t, a_{t-1}, r_{t-1})``, say). A read at step ``t`` is multi-head attention from a query ``q_t`` over the
    slots of steps ``t - M .. t - 1`` of the same episode: the past only, at most ``M = capacity`` steps back,
    keys and values projected from the slots (``k_j = W_k m_j``, ``v_j = W_v m_j``). At an episode's first step
    there is nothing to read: the heads read zeros (:func:`masked_softmax`'s convention), so the read is the
    output projection's bias.

    Acting keeps a :class:`MemoryCache` of the projected keys and values, so a step projects its own slot once
    and reads ``M`` cached ones: ``O(M)`` per step, with no pass over the episode. Learning reads a whole
    sequence at once (:meth:`read_sequence`) with the mask of :func:`window_mask`; both give the same numbers.
    Reads carry no position: what a slot holds is all the memory has to go by (a content-addressed memory,
    as NEC's, Pritzel et al. 2017).
    """

    def __init__(self, dim: int, num_heads: int, capacity: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"EpisodicMemory: capacity must be >= 1, got {capacity}")
        self.capacity, self.num_heads, self.head_dim = capacity, num_heads, dim // num_heads
        self.attention = MultiHeadAttention(dim, num_heads)

    def empty(self, n: int) -> MemoryCache:
        """An empty cache for ``n`` envs."""
        device = self.attention.q_proj.weight.device
        shape = (n, self.num_heads, self.capacity, self.head_dim)
        return MemoryCache(torch.zeros(shape, device=device), torch.zeros(shape, device=device),
                           torch.zeros(n, self.capacity, dtype=torch.bool, device=device))

    def read_step(self, query: Tensor, cache: MemoryCache, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Read for ``N`` envs: ``query`` ``(N, E)`` over the cached slots. Returns ``(N, E)`` and, if asked,
        the weights ``(N, H, M)`` over the slots, oldest first."""
        mask = cache.valid[:, None, None, :]  # (N, 1, 1, M)
        out, weights = self.attention.attend(query[:, None], cache.keys, cache.values, mask, need_weights)
        return out[:, 0], (weights[:, :, 0] if weights is not None else None)

    def write_step(self, slot: Tensor, cache: MemoryCache) -> MemoryCache:
        """Append each env's slot ``(N, E)``, forgetting the oldest once ``M`` are held."""
        k, v = self.attention.project_key_value(slot[:, None], slot[:, None])  # (N, H, 1, d_head)
        valid = torch.cat([cache.valid, cache.valid.new_ones(len(cache.valid), 1)], dim=1)[:, 1:]
        return MemoryCache(torch.cat([cache.keys, k], dim=2)[:, :, 1:], torch.cat([cache.values, v], dim=2)[:, :, 1:],
                           valid)

    def fill(self, slots: Tensor, valid: Tensor) -> MemoryCache:
        """A cache holding the last ``M`` of ``slots`` ``(N, S, E)`` (``S >= M``) with the given validity ``(N, M)``:
        how a cache is rebuilt under new parameters."""
        k, v = self.attention.project_key_value(slots[:, -self.capacity:], slots[:, -self.capacity:])
        return MemoryCache(k, v, valid)

    def read_sequence(self, queries: Tensor, slots: Tensor, starts: Tensor,
                      need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Reads at the last ``T`` of ``S`` positions: ``queries`` ``(B, T, E)``, ``slots`` ``(B, S, E)`` written at all
        ``S`` positions, ``starts`` ``(B, S)`` marking episode starts. Query ``i`` (position ``S - T + i``) reads slot
        ``j`` when ``1 <= S - T + i - j <= M`` in the same episode. Returns ``(B, T, E)`` and the weights
        ``(B, H, T, S)`` if asked."""
        steps = queries.shape[1]
        mask = window_mask(starts, self.capacity + 1, min_lag=1)[:, :, -steps:]  # (B, 1, T, S)
        return self.attention(queries, slots, slots, mask, need_weights)


class MemoryCache(NamedTuple):
    """What :class:`EpisodicMemory` keeps while acting: keys and values ``(N, H, M, d_head)``, oldest first, and
    which slots hold a step of the current episode ``(N, M)``."""

    keys: Tensor
    values: Tensor
    valid: Tensor

    def reset(self, done: Tensor) -> MemoryCache:
        """Forget the episode of the envs where ``done`` ``(N,)`` is True."""
        return MemoryCache(self.keys, self.values, self.valid & ~done[:, None])

    def select(self, index: Tensor) -> MemoryCache:
        return MemoryCache(self.keys[index], self.values[index], self.valid[index])


# --------------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------------
def sinusoidal_positional_encoding(length: int, dim: int, *, base: float = 10_000.0) -> Tensor:
    """The fixed encoding of Vaswani et al. 2017, section 3.5, as a ``(length, dim)`` tensor::

        PE[p, 2i] = sin(p / base^(2i/dim)),   PE[p, 2i+1] = cos(p / base^(2i/dim))

    An odd ``dim`` drops the last cosine column.
    """
    if length < 1 or dim < 1:
        raise ValueError(f"sinusoidal_positional_encoding: length and dim must be >= 1, got {length}, {dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (length, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    angles = position * inv_freq  # (length, ceil(dim/2))
    encoding = torch.zeros(length, dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles)[:, : dim // 2]
    return encoding.to(torch.get_default_dtype())


class _AddPositions(nn.Module):
    max_len: int

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-2] > self.max_len or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected (..., L <= {self.max_len}, {self.dim}); "
                             f"got {tuple(x.shape)}")


class SinusoidalPositionalEncoding(_AddPositions):
    """Adds :func:`sinusoidal_positional_encoding` to ``x`` ``(..., L, dim)``; no parameters."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.register_buffer("encoding", sinusoidal_positional_encoding(max_len, dim), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x + self.encoding[: x.shape[-2]].to(x.dtype)


class LearnedPositionalEmbedding(_AddPositions):
    """Adds a learned vector per position to ``x`` ``(..., L, dim)`` (as in GPT); ``max_len`` positions."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.embedding = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x + self.embedding[: x.shape[-2]]
