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
    "ChunkCache",
    "EpisodicMemory",
    "GRUGate",
    "HierarchicalAttention",
    "HierarchicalMemory",
    "HierarchicalWeights",
    "LearnedPositionalEmbedding",
    "LocalGlobalAttention",
    "MemoryCache",
    "MultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "causal_mask",
    "hierarchical_attention",
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
class GRUGate(nn.Module):
    """The gated residual of GTrXL (Parisotto et al. 2020, eq. 4-7): ``g(x, y)`` in place of ``x + y``::

        r = sigmoid(W_r y + U_r x)
        z = sigmoid(W_z y + U_z x - b_g)
        h = tanh(W_g y + U_g (r * x))
        g(x, y) = (1 - z) * x + z * h

    ``x`` ``(..., E)`` is the residual stream, ``y`` ``(..., E)`` the sublayer's output. With the bias
    ``b_g > 0`` the update gate starts mostly closed (``z`` about ``sigmoid(-b_g)``, 0.12 at the paper's
    ``b_g = 2``, while ``W_z y + U_z x`` is small), so a freshly built block passes its input on nearly
    unchanged and the network starts close to a Markov (one-observation) policy, which Parisotto et al.
    credit for stable RL training. One difference: here ``b_g`` is a fixed number, where the paper
    initialises a bias per layer (and implementations learn it); the gate can still open through
    ``W_z y + U_z x``.
    """

    def __init__(self, d_model: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.w = nn.Linear(d_model, 3 * d_model, bias=False)  # W_r, W_z, W_g on y
        self.u_rz = nn.Linear(d_model, 2 * d_model, bias=False)  # U_r, U_z on x
        self.u_g = nn.Linear(d_model, d_model, bias=False)  # U_g on r * x
        self.gate_bias = gate_bias

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        wr, wz, wg = self.w(y).chunk(3, dim=-1)  # each (..., E)
        ur, uz = self.u_rz(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.gate_bias)
        h = torch.tanh(wg + self.u_g(r * x))
        return (1 - z) * x + z * h


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))`` (the GPT-2 arrangement;
    pre-norm keeps the residual path an identity, which makes deep stacks train without warm-up).

    With ``gated=True`` each residual sum becomes GTrXL's gate (Parisotto et al. 2020):
    ``x = g(x, relu(MHA(LN(x))))``, then ``g(x, relu(MLP(LN(x))))``, with :class:`GRUGate`.

    :meth:`forward` reads a whole sequence at once (training); :meth:`step` computes one new position
    from cached keys and values of the earlier ones (acting), and equals the matching row of
    :meth:`forward` under the same mask. SA-DQN (chapter 7) and the attention actor-critic (chapter 3)
    are built from it.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 gated: bool = False, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)
        self.gate1 = GRUGate(d_model, gate_bias) if gated else None
        self.gate2 = GRUGate(d_model, gate_bias) if gated else None

    @staticmethod
    def _residual(gate: GRUGate | None, x: Tensor, y: Tensor) -> Tensor:
        """``x + y``, or the gate ``g(x, relu(y))``."""
        return x + y if gate is None else gate(x, torch.relu(y))

    def forward(self, x: Tensor, mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(B, T, E)`` -> ``(B, T, E)``, and the weights ``(B, H, T, T)`` if asked for."""
        h = self.norm1(x)
        attended, weights = self.attention(h, h, h, mask=mask, need_weights=need_weights)
        x = self._residual(self.gate1, x, self.dropout(attended))
        return self._residual(self.gate2, x, self.mlp(self.norm2(x))), weights

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
        x = self._residual(self.gate1, x, self.dropout(attended[:, 0]))
        return self._residual(self.gate2, x, self.mlp(self.norm2(x))), k, v, weights


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

    def weights_by_lag(self, weights: Tensor, cache: MemoryCache) -> Tensor:
        """:meth:`read_step`'s weights ``(N, H, M)`` (oldest first) by lag, ``(N, H, M + 1)``: index ``l`` is the step
        ``l`` back (lag 0, the current step, is never read and stays 0)."""
        return torch.cat([torch.zeros_like(weights[..., :1]), weights.flip(-1)], dim=-1)

    def refresh(self, slots: Tensor, cache: MemoryCache) -> MemoryCache:
        """:meth:`fill` with the cache's validity: the cache rebuilt from the last ``P >= M`` slots ``(N, P, E)``."""
        return self.fill(slots, cache.valid)

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
# Hierarchical attention (chapter 5)
# --------------------------------------------------------------------------------------------------
class HierarchicalWeights(NamedTuple):
    """Where a hierarchical read looked, at both levels.

    ``chunks`` ``(..., L, G)``: the weight of each chunk (0 for a chunk not among the top ``k``); ``keys``
    ``(..., L, S)``: the weight of each key in the output, ``chunks[g(j)] * inside[j]``, where ``inside`` is the
    softmax inside key ``j``'s chunk. Each row of ``keys`` sums to 1 (or 0 where nothing is visible), as flat
    attention's weights do.
    """

    chunks: Tensor
    keys: Tensor


def _top_k_older_first(scores: Tensor, k: int) -> Tensor:
    """The indices ``(..., k)`` of the ``k`` largest ``scores`` in each row, largest first; a tie goes to the lower
    index (the older chunk), so that the dense and the cached read, whose chunks are laid out oldest first in
    both, pick the same ones."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def _stable_top_k(scores: Tensor, k: int) -> Tensor:
    """A bool mask ``(..., G)`` of the ``k`` largest finite ``scores`` in each row (:func:`_top_k_older_first`)."""
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, _top_k_older_first(scores, k), True)
    return kept & torch.isfinite(scores)


def hierarchical_attention(q: Tensor, k: Tensor, v: Tensor, chunk_ids: Tensor, top_k: int,
                           mask: Tensor | None = None) -> tuple[Tensor, HierarchicalWeights]:
    """Two-level attention over chunks of keys, after HCAM (Lampinen et al. 2021), computed densely.

    The keys are grouped into chunks by ``chunk_ids``. For each query and head:

    1. a chunk's **summary key** is the mean of the chunk's visible keys, ``kbar_g``; its score is
       ``s_g = q . kbar_g / sqrt(d)``, which is the mean of the chunk's key scores (a dot product is linear);
    2. the ``top_k`` chunks with the largest ``s_g`` are kept; ``alpha = softmax`` of their scores;
    3. inside each kept chunk, ordinary attention: ``beta_j = softmax`` of ``q . k_j / sqrt(d)`` over the chunk;
    4. ``out = sum_g alpha_g sum_{j in g} beta_j v_j``.

    A chunk with no visible key takes no part. This path scores every key (``O(L S)``), and is the reference
    that :class:`HierarchicalMemory`'s cached read (``O(S / c + k c)`` a query) is tested against.

    Args:
        q: ``(B, H, L, d)``; k, v: ``(B, H, S, d)``, heads already split.
        chunk_ids: ``(B, S)`` or ``(S,)`` long, the chunk of each key, numbered oldest first from 0 (ties between
            equal chunk scores go to the lower number).
        top_k: how many chunks a query keeps.
        mask: bool, True where a query may see a key, broadcastable to ``(B, H, L, S)``.

    Returns:
        ``(heads (B, H, L, d), HierarchicalWeights)`` with ``chunks`` ``(B, H, L, G)`` and ``keys`` ``(B, H, L, S)``.
    """
    if top_k < 1:
        raise ValueError(f"hierarchical_attention: top_k must be >= 1, got {top_k}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError("hierarchical_attention: the mask must be boolean (True = may attend)")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    visible = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand_as(scores)
    ids = chunk_ids.expand(scores.shape[0], -1) if chunk_ids.dim() == 1 else chunk_ids  # (B, S)
    num_chunks = int(ids.max()) + 1
    one_hot = F.one_hot(ids, num_chunks).to(scores.dtype)[:, None]  # (B, 1, S, G)
    counts = visible.to(scores.dtype) @ one_hot  # (B, H, L, G): visible keys per chunk
    summary = (scores.masked_fill(~visible, 0.0) @ one_hot) / counts.clamp(min=1)  # (B, H, L, G)
    summary = summary.masked_fill(counts == 0, float("-inf"))
    kept = _stable_top_k(summary, min(top_k, num_chunks))  # (B, H, L, G)
    chunk_weights = masked_softmax(summary, kept)  # (B, H, L, G)
    # Inside each chunk: a softmax over its visible keys, shifted by the chunk's own maximum.
    index = ids[:, None, None, :].expand_as(scores)  # (B, H, L, S)
    masked = scores.masked_fill(~visible, float("-inf"))
    chunk_max = torch.full_like(summary, float("-inf")).scatter_reduce(-1, index, masked, "amax")
    shift = chunk_max.gather(-1, index).masked_fill(~visible, 0.0).detach()  # softmax ignores it
    exp = (masked - shift).exp()  # (B, H, L, S); a hidden key: exp(-inf) = 0, whatever its score (no inf * 0)
    inside = exp / (exp @ one_hot).gather(-1, index).clamp(min=torch.finfo(exp.dtype).tiny)
    key_weights = chunk_weights.gather(-1, index) * inside  # (B, H, L, S)
    return key_weights @ v, HierarchicalWeights(chunk_weights, key_weights)


class HierarchicalAttention(nn.Module):
    """Multi-head attention that reads the top-``k`` chunks of ``chunk_size`` keys (book chapter 5).

    The keys ``0 .. S-1`` fall into chunks of ``c = chunk_size`` consecutive positions (chunk ``g`` holds
    ``g c .. g c + c - 1``; the last may be shorter); each head reads them as :func:`hierarchical_attention` says.
    The projections are a :class:`MultiHeadAttention`'s, so two facts can be checked against chapter 1's module:
    with ``chunk_size = 1`` and ``top_k >= S`` it *is* multi-head attention (a chunk of one key is its own
    summary, and keeping every chunk leaves one softmax over all keys); with ``top_k`` at least the number of
    chunks it is a block-wise mixture: attention inside every chunk, mixed by a softmax over the summaries.

    Args:
        embed_dim, num_heads: as for :class:`MultiHeadAttention`.
        chunk_size: ``c``, keys per chunk.
        top_k: ``k``, chunks read per query.
    """

    def __init__(self, embed_dim: int, num_heads: int, chunk_size: int, top_k: int) -> None:
        super().__init__()
        if chunk_size < 1 or top_k < 1:
            raise ValueError(f"HierarchicalAttention: chunk_size and top_k must be >= 1, got {chunk_size}, {top_k}")
        self.chunk_size, self.top_k = chunk_size, top_k
        self.attention = MultiHeadAttention(embed_dim, num_heads)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, HierarchicalWeights | None]:
        """``query`` ``(B, L, E)`` over ``key``/``value`` ``(B, S, E)``; ``mask`` bool, broadcastable to
        ``(B, H, L, S)`` (``causal_mask(L)`` for self-attention). Returns ``(B, L, E)`` and, if asked, the weights
        at both levels (:class:`HierarchicalWeights`, ``(B, H, L, G)`` and ``(B, H, L, S)``)."""
        mha = self.attention
        mha._check_inputs(query, key, value, mask)
        q = mha._split_heads(mha.q_proj(query))  # (B, H, L, d)
        k, v = mha.project_key_value(key, value)  # (B, H, S, d)
        chunk_ids = torch.arange(key.shape[1], device=key.device) // self.chunk_size  # (S,)
        heads, weights = hierarchical_attention(q, k, v, chunk_ids, self.top_k, mask)  # (B, H, L, d)
        batch, _, length, _ = heads.shape
        out = mha.out_proj(heads.transpose(1, 2).reshape(batch, length, mha.embed_dim))  # (B, L, E)
        return out, (weights if need_weights else None)


class LocalGlobalAttention(nn.Module):
    """Attention over a local window of keys plus the summaries of older chunks, in one softmax (chapter 5).

    The comparison point for :class:`HierarchicalAttention`: a query at position ``i`` sees the recent keys one by
    one, from ``b_i = c * floor((i - window + 1) / c)`` (the chunk border at or before the window's start) to ``i``,
    and every chunk of ``c`` keys wholly before ``b_i`` as one summary (the mean of its keys and the mean of its
    values). Each past key is seen exactly once, alone or in its chunk's mean. Nothing is dropped, but the far
    past is seen only in averages: at most ``window + c - 1`` keys and ``i / c`` summaries per query.

    Args:
        embed_dim, num_heads: as for :class:`MultiHeadAttention`.
        window: keys seen one by one, the query's own position included.
        chunk_size: ``c``, keys per summary.
    """

    def __init__(self, embed_dim: int, num_heads: int, window: int, chunk_size: int) -> None:
        super().__init__()
        if window < 1 or chunk_size < 1:
            raise ValueError(f"LocalGlobalAttention: window and chunk_size must be >= 1, got {window}, {chunk_size}")
        self.window, self.chunk_size = window, chunk_size
        self.attention = MultiHeadAttention(embed_dim, num_heads)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Causal self-attention over ``x`` ``(B, S, E)``. Returns ``(B, S, E)`` and, if asked, the weights
        ``(B, H, S, S + S // c)``: first over the ``S`` keys, then over the ``S // c`` chunk summaries."""
        batch, length, _ = x.shape
        c = self.chunk_size
        chunks = length // c
        summaries = x[:, : chunks * c].reshape(batch, chunks, c, -1).mean(2)  # (B, G, E)
        positions = torch.arange(length, device=x.device)
        border = (positions - self.window + 1).clamp(min=0) // c * c  # (S,): where each query's local keys start
        local = (positions[None, :] >= border[:, None]) & (positions[None, :] <= positions[:, None])  # (S, S)
        chunk_end = torch.arange(chunks, device=x.device) * c + c - 1  # the last position of each chunk
        far = chunk_end[None, :] < border[:, None]  # (S, G): wholly before the local keys
        keys = torch.cat([x, summaries], dim=1)  # (B, S + G, E)
        mask = torch.cat([local, far], dim=1)  # (S, S + G)
        return self.attention(x, keys, keys, mask, need_weights)


class ChunkCache(NamedTuple):
    """What :class:`HierarchicalMemory` keeps while acting, for ``N`` envs: a ring of ``n`` chunks of ``c`` slots.

    ``keys``, ``values`` ``(N, H, n, c, d)``; ``valid`` ``(N, n, c)``; ``key_sums`` ``(N, H, n, d)``, each chunk's
    sum of valid keys (its summary is ``key_sums / count``); ``position`` ``(N,)``, the steps written in the
    current episode. Step ``p`` of an episode lives in ring slot ``(p // c) % n``, offset ``p % c``.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor
    key_sums: Tensor
    position: Tensor

    def reset(self, done: Tensor) -> ChunkCache:
        """Forget the episode of the envs where ``done`` ``(N,)`` is True."""
        keep = ~done
        return ChunkCache(self.keys, self.values, self.valid & keep[:, None, None],
                          self.key_sums * keep[:, None, None, None], self.position * keep)

    def select(self, index: Tensor) -> ChunkCache:
        return ChunkCache(*(t[index] for t in self))


class HierarchicalMemory(nn.Module):
    """An episodic memory read by hierarchical attention (book chapter 5): chapter 4's
    :class:`EpisodicMemory` with the top-``k``-chunk read of :func:`hierarchical_attention` in place of the flat one.

    Step ``t`` of an episode writes one slot into chunk ``t // c``. A read at step ``t`` sees the steps before
    ``t`` of the same episode, at most ``capacity`` steps' worth of chunks back (the ``n = capacity / c`` most
    recent chunks, the current, partial one included; an older chunk is forgotten whole). Acting keeps a
    :class:`ChunkCache` with each chunk's key sum, so a read scores ``n`` summaries, then attends over the ``k c``
    slots of the ``k`` kept chunks: ``O(n + k c)`` per step, against ``O(n c)`` for the flat read. Learning reads a
    whole sequence at once (:meth:`read_sequence`, dense); both give the same numbers. One caveat: chunks whose
    scores tie exactly (chunks of the same content, as a corridor's) give the same read whichever is kept, but the
    two paths round their scores differently and may keep different ones, so their weights can differ there.

    Args:
        dim, num_heads: as for :class:`EpisodicMemory`.
        capacity: steps held, a multiple of ``chunk_size``.
        chunk_size: ``c``; top_k: ``k``.
    """

    def __init__(self, dim: int, num_heads: int, capacity: int, chunk_size: int, top_k: int) -> None:
        super().__init__()
        if chunk_size < 1 or top_k < 1 or capacity < chunk_size or capacity % chunk_size:
            raise ValueError(f"HierarchicalMemory: need chunk_size >= 1, top_k >= 1 and capacity a positive multiple "
                             f"of chunk_size; got capacity {capacity}, chunk_size {chunk_size}, top_k {top_k}")
        self.capacity, self.chunk_size, self.top_k = capacity, chunk_size, top_k
        self.num_chunks = capacity // chunk_size
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attention = MultiHeadAttention(dim, num_heads)

    def empty(self, n: int) -> ChunkCache:
        """An empty cache for ``n`` envs."""
        device = self.attention.q_proj.weight.device
        slots = (n, self.num_heads, self.num_chunks, self.chunk_size, self.head_dim)
        return ChunkCache(torch.zeros(slots, device=device), torch.zeros(slots, device=device),
                          torch.zeros(n, self.num_chunks, self.chunk_size, dtype=torch.bool, device=device),
                          torch.zeros(n, self.num_heads, self.num_chunks, self.head_dim, device=device),
                          torch.zeros(n, dtype=torch.long, device=device))

    def _held_chunks(self, position: Tensor) -> Tensor:
        """``(N, n)``: the episode's chunk numbers the ring holds, oldest first (negative: none yet)."""
        newest = (position - 1).clamp(min=0) // self.chunk_size  # (N,) the current chunk
        return newest[:, None] - (self.num_chunks - 1) + torch.arange(self.num_chunks, device=position.device)

    def _oldest_first(self, cache: ChunkCache) -> Tensor:
        """``(N, n)``: the ring slots in the order their chunks were written, oldest first."""
        return self._held_chunks(cache.position) % self.num_chunks

    def _counts(self, position: Tensor) -> Tensor:
        """``(N, n)``: the steps each held chunk has, oldest first, from the positions alone (no pass over slots)."""
        c = self.chunk_size
        chunk = self._held_chunks(position)  # (N, n)
        last = (position - 1 - chunk[:, -1] * c + 1)[:, None]  # steps in the newest chunk
        counts = torch.where(chunk == chunk[:, -1:], last, torch.full_like(chunk, c))
        return torch.where((chunk >= 0) & (position[:, None] > 0), counts, torch.zeros_like(chunk))

    def read_step(self, query: Tensor, cache: ChunkCache,
                  need_weights: bool = False) -> tuple[Tensor, HierarchicalWeights | None]:
        """Read for ``N`` envs: ``query`` ``(N, E)``. Returns ``(N, E)`` and, if asked, the weights with the chunks
        oldest first: ``chunks`` ``(N, H, n)`` and ``keys`` ``(N, H, n, c)``."""
        mha, c = self.attention, self.chunk_size
        n_env = query.shape[0]
        q = mha._split_heads(mha.q_proj(query[:, None]))[:, :, 0]  # (N, H, d)
        order = self._oldest_first(cache)  # (N, n)
        counts = self._counts(cache.position)  # (N, n), oldest first
        sums = cache.key_sums.gather(2, order[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim))
        summary = (sums @ q[..., None])[..., 0] / (counts[:, None].clamp(min=1) * math.sqrt(self.head_dim))
        summary = summary.masked_fill(counts[:, None] == 0, float("-inf"))  # (N, H, n)
        top = min(self.top_k, self.num_chunks)
        picked = _top_k_older_first(summary, top)  # (N, H, k)
        picked_scores = summary.gather(-1, picked)
        alpha = masked_softmax(picked_scores, torch.isfinite(picked_scores))  # (N, H, k)
        slot = order[:, None, :].expand(-1, self.num_heads, -1).gather(-1, picked)  # (N, H, k): ring slots
        gather = slot[..., None, None].expand(-1, -1, -1, c, self.head_dim)
        keys, values = cache.keys.gather(2, gather), cache.values.gather(2, gather)  # (N, H, k, c, d)
        heads_index = torch.arange(n_env, device=query.device)[:, None, None]
        valid = cache.valid[heads_index, slot]  # (N, H, k, c)
        inside = masked_softmax((keys @ q[:, :, None, :, None])[..., 0] / math.sqrt(self.head_dim), valid)
        weights = alpha[..., None] * inside  # (N, H, k, c)
        heads = (weights[..., None] * values).sum((2, 3))  # (N, H, d)
        out = mha.out_proj(heads.reshape(n_env, mha.embed_dim))  # (N, E)
        if not need_weights:
            return out, None
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(self.num_chunks, device=order.device)
                                                .expand_as(order))  # (N, n): a ring slot's place, oldest first
        where = rank[:, None].expand(-1, self.num_heads, -1).gather(-1, slot)  # (N, H, k)
        chunk_w = torch.zeros_like(summary).scatter_(-1, where, alpha)
        key_w = torch.zeros(*summary.shape, c, device=query.device).scatter_(
            2, where[..., None].expand(-1, -1, -1, c), weights)
        return out, HierarchicalWeights(chunk_w, key_w)

    def weights_by_lag(self, weights: HierarchicalWeights, cache: ChunkCache) -> Tensor:
        """:meth:`read_step`'s key weights ``(N, H, n, c)`` (read from ``cache``) by lag, ``(N, H, capacity + 1)``:
        index ``l`` is the step ``l`` back (lag 0, the current step, is never read)."""
        c = self.chunk_size
        chunk = self._held_chunks(cache.position)  # (N, n), oldest first
        step = chunk[:, :, None] * c + torch.arange(c, device=chunk.device)  # (N, n, c)
        lag = (cache.position[:, None, None] - step).clamp(0, self.capacity)  # (N, n, c); invalid: weight 0
        by_lag = torch.zeros(*weights.keys.shape[:2], self.capacity + 1, device=lag.device)
        return by_lag.scatter_add_(-1, lag.flatten(1)[:, None].expand(-1, weights.keys.shape[1], -1),
                                   weights.keys.flatten(2))

    def write_step(self, slot: Tensor, cache: ChunkCache) -> ChunkCache:
        """Write each env's slot ``(N, E)`` at its episode's next position; a new chunk clears its ring slot."""
        k, v = self.attention.project_key_value(slot[:, None], slot[:, None])  # (N, H, 1, d)
        k, v = k[:, :, 0], v[:, :, 0]  # (N, H, d)
        env = torch.arange(slot.shape[0], device=slot.device)
        ring = (cache.position // self.chunk_size) % self.num_chunks  # (N,)
        offset = cache.position % self.chunk_size
        fresh = offset == 0  # a new chunk starts: the ring slot's old chunk is forgotten
        valid = cache.valid.clone()
        valid[env, ring] = valid[env, ring] & ~fresh[:, None]
        valid[env, ring, offset] = True
        key_sums = cache.key_sums.clone()
        key_sums[env, :, ring] = key_sums[env, :, ring] * ~fresh[:, None, None] + k
        keys, values = cache.keys.clone(), cache.values.clone()
        keys[env, :, ring, offset], values[env, :, ring, offset] = k, v
        return ChunkCache(keys, values, valid, key_sums, cache.position + 1)

    def refresh(self, slots: Tensor, cache: ChunkCache) -> ChunkCache:
        """The cache recomputed from the last ``P >= capacity`` slots written, ``(N, P, E)`` (the last one at position
        ``position - 1``), under the current parameters: how a cache is rebuilt after an update."""
        n_env, length = slots.shape[:2]
        k, v = self.attention.project_key_value(slots, slots)  # (N, H, P, d)
        c, n = self.chunk_size, self.num_chunks
        newest = (cache.position - 1).clamp(min=0) // c  # (N,)
        ring = torch.arange(n, device=slots.device)
        chunk = newest[:, None] - (newest[:, None] - ring) % n  # (N, n): the chunk each ring slot holds
        step = chunk[:, :, None] * c + torch.arange(c, device=slots.device)  # (N, n, c): its steps' positions
        index = (step - cache.position[:, None, None] + length).clamp(0, length - 1)  # (N, n, c) into the P slots
        gather = index.flatten(1)[:, None, :, None].expand(-1, self.num_heads, -1, self.head_dim)
        shape = (n_env, self.num_heads, n, c, self.head_dim)
        keep = cache.valid[:, None, :, :, None]
        keys = k.gather(2, gather).view(shape) * keep
        values = v.gather(2, gather).view(shape) * keep
        return ChunkCache(keys, values, cache.valid, keys.sum(3), cache.position)

    def read_sequence(self, queries: Tensor, slots: Tensor, starts: Tensor, first_position: Tensor | None = None,
                      need_weights: bool = False) -> tuple[Tensor, HierarchicalWeights | None]:
        """Reads at the last ``T`` of ``S`` positions, as :meth:`EpisodicMemory.read_sequence`: ``queries``
        ``(B, T, E)``, ``slots`` ``(B, S, E)``, ``starts`` ``(B, S)``. ``first_position`` ``(B,)`` is the episode step
        of position 0 when no start precedes it in the sequence (default 0). Returns ``(B, T, E)`` and the weights
        ``(B, H, T, G)`` and ``(B, H, T, S)`` if asked (chunks numbered from the oldest in the sequence)."""
        batch, length = starts.shape
        steps = queries.shape[1]
        index = torch.arange(length, device=starts.device)
        last_start = torch.where(starts, index, -1).cummax(-1).values  # (B, S)
        first = torch.zeros(batch, dtype=torch.long, device=starts.device) if first_position is None else first_position
        position = torch.where(last_start >= 0, index - last_start, first[:, None] + index)  # step in its episode
        episode = starts.long().cumsum(-1)
        chunk = torch.div(position, self.chunk_size, rounding_mode="floor")  # (B, S)
        now = slice(length - steps, length)
        oldest = torch.div(position[:, now] - 1, self.chunk_size, rounding_mode="floor") - self.num_chunks + 1
        mask = ((episode[:, now, None] == episode[:, None, :]) & (index[None, :] < index[now, None])
                & (position[:, None, :] >= 0) & (chunk[:, None, :] >= oldest[:, :, None]))  # (B, T, S): past only
        if not need_weights:  # skip the leading positions no query sees (a rollout of whole episodes: the prefix)
            seen = mask.any(1).any(0).nonzero()
            skip = int(seen[0]) if len(seen) else length - 1
            slots, mask, chunk, position = slots[:, skip:], mask[..., skip:], chunk[:, skip:], position[:, skip:]
        chunk = torch.where(position >= 0, chunk, chunk.max(-1, keepdim=True).values)  # unseen: any valid id
        chunk_ids = chunk - chunk.min(-1, keepdim=True).values  # (B, S'), oldest first
        mha = self.attention
        q = mha._split_heads(mha.q_proj(queries))  # (B, H, T, d)
        k, v = mha.project_key_value(slots, slots)  # (B, H, S, d)
        heads, weights = hierarchical_attention(q, k, v, chunk_ids, self.top_k, mask[:, None])
        out = mha.out_proj(heads.transpose(1, 2).reshape(batch, steps, mha.embed_dim))
        return out, (weights if need_weights else None)


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
