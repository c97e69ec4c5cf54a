"""companion.attention against PyTorch's implementations, plus its invariants."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import (
    AdditiveAttention,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    SinusoidalPositionalEncoding,
    causal_mask,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
    sinusoidal_positional_encoding,
    window_mask,
)

TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.float64: dict(atol=1e-12, rtol=1e-10)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _mask(kind: str, shape_ls: tuple[int, int], dtype: torch.dtype, batch: tuple[int, ...] = ()) -> torch.Tensor | None:
    L, S = shape_ls
    if kind == "none":
        return None
    if kind == "causal":
        return causal_mask(L) if L == S else torch.ones(L, S, dtype=torch.bool).tril(S - L)
    allowed = torch.rand(*batch, L, S) > 0.4
    allowed[..., 0] = True  # every query keeps at least one key (PyTorch's reference has no rule otherwise)
    if kind == "bool":
        return allowed
    return torch.zeros(*batch, L, S, dtype=dtype).masked_fill(~allowed, float("-inf")) + 0.1 * torch.randn(
        *batch, L, S, dtype=dtype).masked_fill(~allowed, 0.0)  # "additive": -inf plus a finite bias


# ---------------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "causal"])
@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape"),
    [
        ((5, 8), (7, 8), (7, 3)),  # no batch dims
        ((2, 5, 8), (2, 7, 8), (2, 7, 4)),  # (B, L, d)
        ((2, 4, 6, 8), (1, 4, 6, 8), (2, 1, 6, 5)),  # broadcast batch and head dims
    ],
)
def test_sdpa_equals_torch(dtype, mask_kind, q_shape, k_shape, v_shape):
    q, k, v = (torch.randn(s, dtype=dtype) for s in (q_shape, k_shape, v_shape))
    mask = _mask(mask_kind, (q_shape[-2], k_shape[-2]), dtype, batch=q_shape[:-2][-1:])
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    assert weights.shape == (*torch.broadcast_shapes(q_shape[:-2], k_shape[:-2]), q_shape[-2], k_shape[-2])


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_sdpa_custom_scale_equals_torch(scale):
    q, k, v = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64), torch.randn(
        2, 6, 3, dtype=torch.float64)
    out, _ = scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=scale), **TOL[torch.float64])


def test_weights_are_a_distribution_and_masked_weights_are_exactly_zero():
    q, k, v = torch.randn(3, 5, 8), torch.randn(3, 9, 8), torch.randn(3, 9, 4)
    mask = _mask("bool", (5, 9), torch.float32, batch=(3,))
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    assert (weights[~mask] == 0).all()
    assert (weights[mask] > 0).all()


def test_fully_masked_query_row_is_zero_without_nan_in_value_or_gradient():
    q = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of batch 0 may attend to nothing
    for m in (mask, torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))):
        out, weights = scaled_dot_product_attention(q, k, v, m)
        assert torch.equal(weights[0, 1], torch.zeros(6, dtype=torch.float64))
        assert torch.equal(out[0, 1], torch.zeros(3, dtype=torch.float64))
        out.sum().backward()
        for tensor in (q, k, v):
            assert torch.isfinite(tensor.grad).all()
        assert torch.equal(q.grad[0, 1], torch.zeros(8, dtype=torch.float64))
        q.grad = k.grad = v.grad = None


def test_sdpa_gradcheck_float64():
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    mask = _mask("bool", (3, 5), torch.float64, batch=(2,))
    mask[1, 2] = False  # include a fully masked row
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, mask)[0], (q, k, v))


def test_sdpa_shape_errors_say_what_was_expected_and_what_came():
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 4)
    with pytest.raises(ValueError, match=r"must share d_k; got query \(2, 5, 8\) and key \(2, 7, 16\)"):
        scaled_dot_product_attention(q, torch.randn(2, 7, 16), v)
    with pytest.raises(ValueError, match=r"must share S; got key \(2, 7, 8\) and value \(2, 6, 4\)"):
        scaled_dot_product_attention(q, k, torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 6\) does not broadcast to the scores .* \(2, 5, 7\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not broadcast"):
        scaled_dot_product_attention(q, torch.randn(3, 7, 8), torch.randn(3, 7, 4))
    with pytest.raises(ValueError, match="at least 2 dims"):
        scaled_dot_product_attention(torch.randn(8), k, v)


def test_masked_softmax_without_mask_is_softmax():
    scores = torch.randn(4, 5, 6)
    torch.testing.assert_close(masked_softmax(scores), torch.softmax(scores, -1))


# ---------------------------------------------------------------------------------------------------
# MultiHeadAttention
# ---------------------------------------------------------------------------------------------------
def _torch_and_ours(embed_dim=16, num_heads=4, kdim=None, vdim=None, bias=True, dtype=torch.float64):
    reference = nn.MultiheadAttention(embed_dim, num_heads, kdim=kdim, vdim=vdim, bias=bias, batch_first=True)
    reference = reference.to(dtype)
    return reference, MultiHeadAttention.from_torch(reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize(("kdim", "vdim", "bias"), [(None, None, True), (12, 20, True), (12, 20, False)])
def test_mha_equals_torch_with_key_padding(dtype, need_weights, kdim, vdim, bias):
    reference, ours = _torch_and_ours(kdim=kdim, vdim=vdim, bias=bias, dtype=dtype)
    B, L, S = 3, 5, 7
    query = torch.randn(B, L, 16, dtype=dtype)
    key, value = torch.randn(B, S, kdim or 16, dtype=dtype), torch.randn(B, S, vdim or 16, dtype=dtype)
    valid = padding_mask([7, 4, 1], S)  # (B, S), True = real token
    expected, expected_weights = reference(query, key, value, key_padding_mask=~valid,  # torch: True = ignore
                                           need_weights=True, average_attn_weights=False)
    out, weights = ours(query, key, value, mask=valid[:, None, None, :], need_weights=need_weights)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, **TOL[dtype])
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_causal_self_attention_equals_torch_and_gradients_match(need_weights):
    reference, ours = _torch_and_ours()
    x = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    # nn.MultiheadAttention's boolean attn_mask means "not allowed": the opposite of ours.
    expected, _ = reference(x_ref, x_ref, x_ref, attn_mask=~causal_mask(6), need_weights=False)
    out, _ = ours(x, x, x, mask=causal_mask(6), need_weights=need_weights)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL[torch.float64])
    torch.testing.assert_close(ours.out_proj.weight.grad, reference.out_proj.weight.grad, **TOL[torch.float64])


def test_mha_fast_and_manual_paths_agree_with_an_additive_mask_and_a_fully_masked_row():
    mha = MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    mask[1, 2, 3] = float("-inf")  # batch 1, head 2, query 3 sees nothing
    fast, _ = mha(x, x, x, mask)
    manual, weights = mha(x, x, x, mask, need_weights=True)
    torch.testing.assert_close(fast, manual, **TOL[torch.float64])
    assert torch.equal(weights[1, 2, 3], torch.zeros(5, dtype=torch.float64))
    fully = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    fully[0] = False  # every query of batch 0 sees nothing: the output is the projection's bias
    for need_weights in (False, True):
        out, _ = mha(x, x, x, fully, need_weights=need_weights)
        torch.testing.assert_close(out[0], mha.out_proj.bias.expand(5, 16))


def test_mha_gradcheck_float64():
    mha = MultiHeadAttention(8, 2, kdim=6, vdim=4).double()
    query = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    key = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = padding_mask([4, 2], 4)[:, None, None, :]
    for need_weights in (True, False):
        assert torch.autograd.gradcheck(lambda q, k, v, nw=need_weights: mha(q, k, v, mask, need_weights=nw)[0],
                                        (query, key, value))


def test_mha_dropout_only_in_training():
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    mha.eval()
    torch.testing.assert_close(mha(x, x, x)[0], mha(x, x, x, need_weights=True)[0])
    mha.train()
    assert not torch.allclose(mha(x, x, x)[0], mha(x, x, x)[0])


def test_self_attention_is_permutation_equivariant_without_positions_and_not_with_them():
    mha = MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    perm = torch.randperm(7)
    out, _ = mha(x, x, x)
    out_perm, _ = mha(x[:, perm], x[:, perm], x[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], **TOL[torch.float64])
    positions = SinusoidalPositionalEncoding(7, 16).double()
    y, y_perm = positions(x), positions(x[:, perm])
    out, _ = mha(y, y, y)
    out_perm, _ = mha(y_perm, y_perm, y_perm)
    assert (out_perm - out[:, perm]).abs().max() > 1e-3


def test_mha_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MultiHeadAttention(10, 4)
    mha = MultiHeadAttention(16, 4, kdim=12)
    q = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"key must be \(B, len, kdim=12\) \(batch first\); got shape \(2, 7, 16\)"):
        mha(q, torch.randn(2, 7, 16), torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match=r"query must be \(B, len, E=16\)"):
        mha(torch.randn(5, 16), torch.randn(2, 7, 12), torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 7\) does not broadcast .* \(2, 4, 5, 7\)"):
        mha(q, torch.randn(2, 7, 12), torch.randn(2, 7, 16), mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch_first=True"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(16, 4))


# ---------------------------------------------------------------------------------------------------
# Additive attention
# ---------------------------------------------------------------------------------------------------
def test_additive_attention_matches_the_formula_written_as_loops():
    att = AdditiveAttention(query_dim=5, key_dim=3, hidden_dim=4).double()
    q, k, v = torch.randn(2, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), torch.randn(
        6, 2, dtype=torch.float64)
    out, weights = att(q, k, v)
    for i in range(2):
        scores = torch.stack([att.w_score(torch.tanh(att.w_query(q[i]) + att.w_key(k[j]))).squeeze()
                              for j in range(6)])
        expected = torch.softmax(scores, 0)
        torch.testing.assert_close(weights[i], expected)
        torch.testing.assert_close(out[i], expected @ v)


def test_additive_attention_batched_masked_and_gradcheck():
    att = AdditiveAttention(8, 6, 5).double()
    h = torch.randn(4, 1, 8, dtype=torch.float64, requires_grad=True)  # DARQN-like: one query per step
    locations = torch.randn(4, 49, 6, dtype=torch.float64, requires_grad=True)  # 7x7 locations
    mask = torch.ones(4, 1, 49, dtype=torch.bool)
    mask[0, :, 10:] = False
    out, weights = att(h, locations, locations, mask)
    assert out.shape == (4, 1, 6) and weights.shape == (4, 1, 49)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 1, dtype=torch.float64))
    assert (weights[0, 0, 10:] == 0).all()
    assert torch.autograd.gradcheck(lambda h, x: att(h, x, x, mask)[0], (h, locations))
    with pytest.raises(ValueError, match=r"expected query \(\.\.\., L, 8\)"):
        att(torch.randn(4, 1, 7), locations, locations)


# ---------------------------------------------------------------------------------------------------
# Masks and positions
# ---------------------------------------------------------------------------------------------------
def test_causal_and_padding_masks():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(padding_mask([2, 0, 3], 4), torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]).bool())
    assert padding_mask(torch.tensor([1, 3])).shape == (2, 3)
    with pytest.raises(ValueError, match="lengths must lie in"):
        padding_mask([5], 4)
    with pytest.raises(ValueError, match="length must be >= 1"):
        causal_mask(0)


def test_causal_attention_does_not_look_ahead():
    mha = MultiHeadAttention(16, 4).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16, dtype=torch.float64)  # change the future of position 3
    for need_weights in (False, True):
        out, _ = mha(x, x, x, causal_mask(6), need_weights=need_weights)
        out_changed, _ = mha(changed, changed, changed, causal_mask(6), need_weights=need_weights)
        torch.testing.assert_close(out[:, :4], out_changed[:, :4], **TOL[torch.float64])


def test_sinusoidal_encoding_values():
    pe = sinusoidal_positional_encoding(50, 16)
    assert pe.shape == (50, 16)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 8))
    p, i = 7, 3
    torch.testing.assert_close(pe[p, 2 * i], torch.tensor(math.sin(p / 10_000 ** (2 * i / 16))))
    torch.testing.assert_close(pe[p, 2 * i + 1], torch.tensor(math.cos(p / 10_000 ** (2 * i / 16))))
    odd = sinusoidal_positional_encoding(5, 7)
    assert odd.shape == (5, 7)
    torch.testing.assert_close(odd[:, 6], torch.sin(torch.arange(5.0) / 10_000 ** (6 / 7)))
    assert pe.abs().max() <= 1.0


def test_positional_modules_add_positions_and_check_length():
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(SinusoidalPositionalEncoding(10, 8)(x)[0], sinusoidal_positional_encoding(5, 8))
    learned = LearnedPositionalEmbedding(10, 8)
    torch.testing.assert_close(learned(x)[1], learned.embedding[:5].detach())
    assert sum(p.numel() for p in learned.parameters()) == 80
    with pytest.raises(ValueError, match=r"expected \(\.\.\., L <= 4, 8\); got \(2, 5, 8\)"):
        LearnedPositionalEmbedding(4, 8)(x)


# -- the transformer block's cached step, and the sliding window (chapters 3 and 7) -------------------
@pytest.mark.parametrize("gated", [False, True])
def test_block_step_with_cached_keys_equals_the_row_of_the_whole_sequence(gated):
    from companion.attention import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(16, 4, mlp_ratio=2, gated=gated, gate_bias=0.0)  # bias 0: the gates mix half-open
    x = torch.randn(2, 7, 16)
    bias = torch.randn(4, 3)
    starts = torch.zeros(2, 7, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, 4] = True
    with torch.no_grad():
        whole, _ = block(x, window_mask(starts, 3, bias))
        h = block.norm1(x)
        k, v = block.attention.project_key_value(h, h)  # (B, H, T, d_head): what a cache would hold
        t = 5  # keys t-2, t-1 from the cache, t itself new; env 1 started an episode at 4
        lags = torch.tensor([2, 1, 0])
        allowed = torch.tensor([[True, True, True], [False, True, True]])
        mask = bias[:, lags][None, :, None].masked_fill(~allowed[:, None, None], float("-inf"))
        out, k_t, v_t, weights = block.step(x[:, t], k[:, :, t - 2:t], v[:, :, t - 2:t], mask, need_weights=True)
    torch.testing.assert_close(out, whole[:, t])
    torch.testing.assert_close(k_t, k[:, :, t:t + 1])
    assert weights[1, :, 0, 0].eq(0).all() and torch.allclose(weights.sum(-1), torch.ones(2, 4, 1))


def test_gru_gate_equals_its_equations_written_out_from_its_weights():
    """GTrXL's gate (Parisotto et al. 2020): r, z, h and (1 - z) * x + z * h from the weight matrices."""
    from companion.attention import GRUGate

    gate = GRUGate(8, gate_bias=1.5).double()
    x, y = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    w_r, w_z, w_g = gate.w.weight.split(8)  # each (E, E), applied as y @ W.T
    u_r, u_z = gate.u_rz.weight.split(8)
    r = torch.sigmoid(y @ w_r.T + x @ u_r.T)
    z = torch.sigmoid(y @ w_z.T + x @ u_z.T - 1.5)
    h = torch.tanh(y @ w_g.T + (r * x) @ gate.u_g.weight.T)
    with torch.no_grad():
        torch.testing.assert_close(gate(x, y), (1 - z) * x + z * h, **TOL[torch.float64])
    assert [name for name, _ in gate.named_parameters()] == ["w.weight", "u_rz.weight", "u_g.weight"]  # no biases
    # Zero weights: z = sigmoid(-b_g) everywhere and h = 0, so the gate scales x by 1 - sigmoid(-b_g).
    with torch.no_grad():
        for p in gate.parameters():
            p.zero_()
        torch.testing.assert_close(gate(x, y), (1 - torch.sigmoid(torch.tensor(-1.5, dtype=torch.float64))) * x)


def test_a_large_gate_bias_closes_the_gate_and_the_gated_block_passes_its_input_on():
    from companion.attention import GRUGate, TransformerBlock

    x, y = torch.randn(2, 6, 16), torch.randn(2, 6, 16) * 3
    with torch.no_grad():
        assert torch.equal(GRUGate(16, gate_bias=200.0)(x, y), x)  # z = sigmoid(-200) is 0 in float32
        assert not torch.allclose(GRUGate(16, gate_bias=0.0)(x, y), x)
        block = TransformerBlock(16, 4, mlp_ratio=2, gated=True, gate_bias=200.0)
        out, _ = block(x, causal_mask(6))
        torch.testing.assert_close(out, x)
        stepped, *_ = block.step(x[:, 0], torch.zeros(2, 4, 0, 4), torch.zeros(2, 4, 0, 4))
        torch.testing.assert_close(stepped, x[:, 0])


def test_gated_block_gates_the_relu_of_each_sublayer():
    """GTrXL's block: x = g1(x, relu(MHA(LN(x)))), then g2(x, relu(MLP(LN(x)))), in place of the sums."""
    from companion.attention import TransformerBlock

    block = TransformerBlock(16, 4, mlp_ratio=2, gated=True, gate_bias=0.0)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, _ = block(x, causal_mask(5))
        h = block.norm1(x)
        mid = block.gate1(x, torch.relu(block.attention(h, h, h, mask=causal_mask(5))[0]))
        torch.testing.assert_close(out, block.gate2(mid, torch.relu(block.mlp(block.norm2(mid)))))


def test_ungated_block_is_the_plain_pre_norm_block_with_no_gate_parameters():
    """gated=False (the default) keeps the block as it was: the same parameters (nothing for the gates in
    the state dict, so saved SA-DQN policies still load) and x + MHA(LN(x)), then x + MLP(LN(x))."""
    from companion.attention import GRUGate, TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(16, 4, mlp_ratio=2)
    assert block.gate1 is None and block.gate2 is None
    assert not any(isinstance(m, GRUGate) for m in block.modules())
    plain_keys = {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "mlp.0.weight", "mlp.0.bias",
                  "mlp.2.weight", "mlp.2.bias"}
    keys = set(block.state_dict())
    assert plain_keys <= keys and all(k.startswith("attention.") for k in keys - plain_keys)
    torch.manual_seed(0)
    gated = TransformerBlock(16, 4, mlp_ratio=2, gated=True)
    gate_keys = {k for k in gated.state_dict() if k.startswith(("gate1.", "gate2."))}
    assert gate_keys and set(gated.state_dict()) - gate_keys == keys
    # The gates are built last: under the same seed every other parameter is the ungated block's.
    assert all(torch.equal(gated.state_dict()[k], v) for k, v in block.state_dict().items())
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out, _ = block(x, causal_mask(5))
        h = block.norm1(x)
        mid = x + block.attention(h, h, h, mask=causal_mask(5))[0]
        torch.testing.assert_close(out, mid + block.mlp(block.norm2(mid)))
        assert not torch.allclose(gated(x, causal_mask(5))[0], out)


def test_window_mask_is_causal_windowed_and_stops_at_episode_starts():
    starts = torch.tensor([[True, False, False, True, False]])
    allowed = window_mask(starts, 2)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert torch.equal(allowed.int(), expected)
    bias = torch.tensor([[0.5, -1.0]])  # one head: lag 0, lag 1
    with_bias = window_mask(starts, 2, bias)[0, 0]
    assert with_bias[4, 3] == -1.0 and with_bias[4, 4] == 0.5 and torch.isneginf(with_bias[3, 2])


def test_episodic_memory_reads_the_past_only_within_capacity_and_caching_changes_nothing():
    from companion.attention import EpisodicMemory

    torch.manual_seed(0)
    memory = EpisodicMemory(8, 2, capacity=3)
    slots, queries = torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    starts = torch.zeros(2, 7, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, 4] = True  # env 1: a new episode at step 4
    with torch.no_grad():
        whole, weights = memory.read_sequence(queries, slots, starts, need_weights=True)
        cache, stepwise = memory.empty(2), []
        for t in range(7):
            cache = cache.reset(starts[:, t])
            stepwise.append(memory.read_step(queries[:, t], cache)[0])
            cache = memory.write_step(slots[:, t], cache)
    torch.testing.assert_close(torch.stack(stepwise, 1), whole, atol=1e-5, rtol=1e-5)
    w = weights[0, 0]  # env 0, head 0: (T, S)
    assert w[0].eq(0).all()  # step 0 has no past: it reads nothing, and its output is the projection's bias
    torch.testing.assert_close(whole[:, 0], memory.attention.out_proj.bias.detach().expand(2, 8))
    assert w.triu().eq(0).all()  # never the current step or later
    assert w[6, :3].eq(0).all() and w[6, 3:6].sum().item() == pytest.approx(1.0)  # steps 3..5: capacity 3
    assert weights[1, :, 4].eq(0).all() and weights[1, :, 5, :4].eq(0).all()  # a new episode forgets the old


def test_episodic_memory_fill_keeps_the_last_capacity_slots():
    from companion.attention import EpisodicMemory

    torch.manual_seed(0)
    memory = EpisodicMemory(8, 2, capacity=3)
    slots = torch.randn(2, 5, 8)  # S = 5 > M = 3
    valid = torch.tensor([[True, True, True], [False, True, True]])
    with torch.no_grad():
        filled = memory.fill(slots, valid)
        written = memory.empty(2)
        for t in range(5):
            written = memory.write_step(slots[:, t], written)
    torch.testing.assert_close(filled.keys, written.keys)  # slots 2, 3, 4, oldest first
    torch.testing.assert_close(filled.values, written.values)
    assert torch.equal(filled.valid, valid)


def test_episodic_memory_needs_at_least_one_slot():
    from companion.attention import EpisodicMemory

    with pytest.raises(ValueError, match="capacity must be >= 1"):
        EpisodicMemory(8, 2, capacity=0)


# -- hierarchical attention (chapter 5) --------------------------------------------------------------
def _by_hand_hierarchical(q, k, v, chunk_ids, top_k, mask):
    """hierarchical_attention's definition with loops, for one batch element: q (H, L, d), k, v (H, S, d)."""
    heads, length, d = q.shape
    out = torch.zeros(heads, length, v.shape[-1], dtype=torch.float64)
    for h in range(heads):
        for i in range(length):
            scores = {}
            for g in sorted(set(chunk_ids.tolist())):
                seen = [j for j in range(k.shape[1]) if chunk_ids[j] == g and mask[i, j]]
                if seen:
                    mean_key = k[h, seen].double().mean(0)
                    scores[g] = (float(q[h, i].double() @ mean_key) / math.sqrt(d), seen)
            kept = sorted(scores, key=lambda g: (-scores[g][0], g))[:top_k]
            if not kept:
                continue
            alpha = torch.softmax(torch.tensor([scores[g][0] for g in kept], dtype=torch.float64), 0)
            for a, g in zip(alpha, kept, strict=True):
                seen = scores[g][1]
                beta = torch.softmax(k[h, seen].double() @ q[h, i].double() / math.sqrt(d), 0)
                out[h, i] += a * (beta @ v[h, seen].double())
    return out


@pytest.mark.parametrize("top_k", [1, 2, 3, 10])
def test_hierarchical_attention_against_its_definition_by_hand(top_k):
    from companion.attention import hierarchical_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 2, 11, 4), torch.randn(1, 2, 11, 4)
    chunk_ids = torch.arange(11) // 3  # chunks of 3, 3, 3 and 2 keys
    mask = torch.rand(9, 11) > 0.3
    mask[:, 3:6] = False  # chunk 1 is empty for every query: it takes no part
    mask[4] = False  # a query that sees nothing reads zeros
    heads, weights = hierarchical_attention(q, k, v, chunk_ids, top_k, mask)
    expected = _by_hand_hierarchical(q[0], k[0], v[0], chunk_ids, top_k, mask)
    torch.testing.assert_close(heads[0].double(), expected, atol=1e-5, rtol=1e-5)
    assert weights.chunks.shape == (1, 2, 9, 4) and weights.keys.shape == (1, 2, 9, 11)
    assert (weights.chunks[..., 1] == 0).all() and (weights.keys[..., ~mask] == 0).all()
    assert ((weights.chunks > 0).sum(-1) <= top_k).all()
    sums = weights.keys.sum(-1)
    torch.testing.assert_close(sums[..., 4], torch.zeros(1, 2))
    torch.testing.assert_close(torch.cat([sums[..., :4], sums[..., 5:]], -1), torch.ones(1, 2, 8))


def test_hierarchical_attention_with_chunks_of_one_and_every_chunk_kept_is_multi_head_attention():
    from companion.attention import HierarchicalAttention, causal_mask

    torch.manual_seed(1)
    hier = HierarchicalAttention(8, 2, chunk_size=1, top_k=7)
    x = torch.randn(3, 7, 8)
    out, weights = hier(x, x, x, causal_mask(7), need_weights=True)
    flat, flat_weights = hier.attention(x, x, x, causal_mask(7), need_weights=True)
    torch.testing.assert_close(out, flat, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.keys, flat_weights, atol=1e-6, rtol=1e-5)


def test_hierarchical_attention_keeping_every_chunk_is_a_blockwise_mixture():
    """top_k >= the number of chunks: attention inside each chunk (a block-diagonal mask), mixed by the softmax of
    the chunks' mean-key scores; not flat attention over all keys."""
    from companion.attention import HierarchicalAttention

    torch.manual_seed(2)
    hier = HierarchicalAttention(8, 2, chunk_size=4, top_k=3)
    x, memory = torch.randn(2, 5, 8), torch.randn(2, 12, 8)
    out, _ = hier(x, memory, memory)
    mha = hier.attention
    q, k = mha._split_heads(mha.q_proj(x)), mha._split_heads(mha.k_proj(memory))  # (B, H, L, d), (B, H, 12, d)
    # per head: the weights inside chunk g times chunk g's values, mixed by the softmax of the chunks' scores
    scores = torch.stack([q @ k[:, :, g * 4:(g + 1) * 4].mean(2, keepdim=True).transpose(-2, -1) / 2.0
                          for g in range(3)], -1)[..., 0, :]  # (B, H, L, 3)
    alpha = torch.softmax(scores, -1)
    per_head = torch.stack([mha(x, memory[:, g * 4:(g + 1) * 4], memory[:, g * 4:(g + 1) * 4], need_weights=True)[1]
                            @ mha._split_heads(mha.v_proj(memory[:, g * 4:(g + 1) * 4])) for g in range(3)], -1)
    mixed = (per_head * alpha[..., None, :]).sum(-1)  # (B, H, L, d)
    expected = mha.out_proj(mixed.transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, mha(x, memory, memory)[0], atol=1e-3)  # and it is not flat attention


def test_hierarchical_attention_is_causal_and_its_gradient_reaches_only_kept_chunks():
    from companion.attention import HierarchicalAttention, causal_mask

    torch.manual_seed(3)
    hier = HierarchicalAttention(8, 2, chunk_size=3, top_k=1)
    x = torch.randn(1, 12, 8, requires_grad=True)
    out, weights = hier(x, x, x, causal_mask(12), need_weights=True)
    later = x.detach().clone()
    later[:, 7:] += 3.0
    torch.testing.assert_close(hier(later, later, later, causal_mask(12))[0][:, :7], out[:, :7])
    # the last query keeps one chunk per head; the keys of the other chunks get no gradient through the read
    k = hier.attention._split_heads(hier.attention.k_proj(x))
    k.retain_grad()
    q = hier.attention._split_heads(hier.attention.q_proj(x))
    from companion.attention import hierarchical_attention

    heads, w = hierarchical_attention(q[:, :, -1:], k, k, torch.arange(12) // 3, 1)
    heads.sum().backward()
    kept = w.chunks[0, :, 0] > 0  # (H, 4)
    for h in range(2):
        for g in range(4):
            grad = k.grad[0, h, g * 3:(g + 1) * 3]
            assert (grad.abs().sum() > 0) == bool(kept[h, g]), (h, g)


def test_hierarchical_memory_acting_equals_rereading_across_episodes_and_forgotten_chunks():
    from companion.attention import HierarchicalMemory

    torch.manual_seed(4)
    memory = HierarchicalMemory(8, 2, capacity=12, chunk_size=3, top_k=2)
    n, length = 3, 40
    slots, queries = torch.randn(n, length, 8), torch.randn(n, length, 8)
    starts = torch.zeros(n, length, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, 17] = True  # a new episode mid-sequence
    starts[2, 5] = starts[2, 6] = True  # a one-step episode
    cache, outs, keys = memory.empty(n), [], []
    with torch.no_grad():
        for t in range(length):
            cache = cache.reset(starts[:, t])
            out, w = memory.read_step(queries[:, t], cache, need_weights=True)
            outs.append(out)
            keys.append(memory.weights_by_lag(w, cache))
            cache = memory.write_step(slots[:, t], cache)
        reread, weights = memory.read_sequence(queries, slots, starts, need_weights=True)
    torch.testing.assert_close(torch.stack(outs, 1), reread, atol=1e-5, rtol=1e-5)
    # the same weights, by lag: the key weights of query t over position t - lag
    for t in (10, 25, 39):
        by_lag = keys[t]  # (N, H, capacity + 1)
        for lag in range(1, 13):
            torch.testing.assert_close(by_lag[:, :, lag], weights.keys[:, :, t, t - lag], atol=1e-6, rtol=1e-5)
        assert (weights.keys[:, :, t, : max(0, t - 12)] == 0).all()  # nothing older than the capacity
    # rebuilding the cache from the last 12 slots under the same parameters changes no read
    rebuilt = memory.refresh(slots[:, -12:], cache)
    q = torch.randn(n, 8)
    torch.testing.assert_close(memory.read_step(q, rebuilt)[0], memory.read_step(q, cache)[0], atol=1e-5, rtol=1e-5)


def test_hierarchical_memory_rejects_bad_settings():
    from companion.attention import (
        HierarchicalAttention,
        HierarchicalMemory,
        LocalGlobalAttention,
        hierarchical_attention,
    )

    with pytest.raises(ValueError, match="multiple of chunk_size"):
        HierarchicalMemory(8, 2, capacity=10, chunk_size=3, top_k=1)
    with pytest.raises(ValueError, match="top_k"):
        HierarchicalAttention(8, 2, chunk_size=2, top_k=0)
    with pytest.raises(ValueError, match="window"):
        LocalGlobalAttention(8, 2, window=0, chunk_size=2)
    with pytest.raises(ValueError, match="boolean"):
        x = torch.randn(1, 1, 2, 4)
        hierarchical_attention(x, x, x, torch.zeros(2, dtype=torch.long), 1, torch.zeros(2, 2))


def test_local_global_attention():
    from companion.attention import LocalGlobalAttention, causal_mask

    torch.manual_seed(5)
    wide = LocalGlobalAttention(8, 2, window=10, chunk_size=3)
    x = torch.randn(2, 10, 8)
    torch.testing.assert_close(wide(x)[0], wide.attention(x, x, x, causal_mask(10))[0])  # window >= S: flat
    narrow = LocalGlobalAttention(8, 2, window=3, chunk_size=3)
    out, weights = narrow(x, need_weights=True)
    assert weights.shape == (2, 2, 10, 13)
    later = x.clone()
    later[:, 6:] += 2.0
    torch.testing.assert_close(narrow(later)[0][:, :6], out[:, :6])  # causal
    # step 9 (window 3: the border is 3 * floor(7 / 3) = 6) sees steps 6..9 one by one and chunks 0 and 1
    # (steps 0..5) as means: a reshuffle inside chunk 0 changes nothing; a change of its mean does
    shuffled = x.clone()
    shuffled[:, [0, 1, 2]] = x[:, [2, 0, 1]]
    torch.testing.assert_close(narrow(shuffled)[0][:, 9], out[:, 9])
    moved = x.clone()
    moved[:, 0] += 1.0
    assert not torch.allclose(narrow(moved)[0][:, 9], out[:, 9])
    assert (weights[:, :, 9, :6] == 0).all() and (weights[:, :, 9, 6:10] > 0).all()
    assert (weights[:, :, 9, 10:12] > 0).all() and (weights[:, :, 9, 12] == 0).all()
    # every past step is seen exactly once, alone or inside one summary
    chunk_of = torch.arange(10) // 3
    for i in range(10):
        alone = weights[0, 0, i, :10] > 0
        summarised = weights[0, 0, i, 10:][chunk_of.clamp(max=2)].bool() & (chunk_of < 3)
        assert torch.equal(alone ^ summarised, torch.arange(10) <= i), i


def test_hierarchical_attention_has_no_nan_gradient_from_a_large_hidden_score():
    from companion.attention import hierarchical_attention

    q = torch.ones(1, 1, 1, 4, requires_grad=True)
    k = torch.tensor([[1.0] * 4, [50.0] * 4, [0.5] * 4])[None, None].requires_grad_()  # key 1: score 100
    v = torch.randn(1, 1, 3, 4)
    mask = torch.tensor([[True, False, True]])  # the large score is hidden
    heads, _ = hierarchical_attention(q, k, v, torch.tensor([0, 0, 1]), 2, mask)
    heads.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert (k.grad[0, 0, 1] == 0).all()


def test_hierarchical_memory_counts_follow_the_positions():
    from companion.attention import HierarchicalMemory

    memory = HierarchicalMemory(8, 2, capacity=12, chunk_size=3, top_k=1)
    cache = memory.empty(1)
    for t in range(20):
        held = cache.valid.sum(-1).gather(1, memory._oldest_first(cache))  # (1, n), oldest first
        assert torch.equal(memory._counts(cache.position), held), t
        cache = memory.write_step(torch.randn(1, 8), cache)
    cache = cache.reset(torch.tensor([True]))
    assert (memory._counts(cache.position) == 0).all()


def test_hierarchical_attention_ties_go_to_the_older_chunk_and_each_chunk_has_its_own_shift():
    from companion.attention import hierarchical_attention

    q = torch.ones(1, 1, 1, 2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    k = torch.stack([a, b, b, a])[None, None]  # chunks 0 and 1 hold the same keys: an exact tie
    _, w = hierarchical_attention(q, k, torch.randn(1, 1, 4, 2), torch.tensor([0, 0, 1, 1]), 1)
    assert w.chunks[0, 0, 0].tolist() == [1.0, 0.0]
    # scores 200 and -200 in chunk 0, 1 and 0 in chunk 1: a shift by the row's maximum would underflow chunk 1
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([200.0, -200.0, 1.0, 0.0]).view(1, 1, 4, 1)
    _, w = hierarchical_attention(q, k, k, torch.tensor([0, 0, 1, 1]), 2)
    alpha = torch.softmax(torch.tensor([0.0, 0.5]), 0)  # the mean scores
    expected = torch.cat([alpha[0] * torch.tensor([1.0, 0.0]), alpha[1] * torch.softmax(torch.tensor([1.0, 0.0]), 0)])
    torch.testing.assert_close(w.keys[0, 0, 0], expected)


def test_hierarchical_memory_ties_go_to_the_older_chunk_when_acting():
    from companion.attention import HierarchicalMemory

    memory = HierarchicalMemory(4, 1, capacity=4, chunk_size=1, top_k=1)
    cache, slot = memory.empty(1), torch.randn(1, 4)
    for _ in range(2):
        cache = memory.write_step(slot, cache)  # the same slot twice: two chunks that tie
    with torch.no_grad():
        _, w = memory.read_step(torch.randn(1, 4), cache, need_weights=True)
        by_lag = memory.weights_by_lag(w, cache)[0, 0]
    assert by_lag[2] == 1 and by_lag[1] == 0  # the older (lag 2) is kept


def test_local_global_attention_against_its_definition_row_by_row():
    from companion.attention import LocalGlobalAttention

    torch.manual_seed(6)
    lg = LocalGlobalAttention(8, 2, window=3, chunk_size=3)
    x = torch.randn(2, 14, 8)
    out, _ = lg(x)
    for i in range(14):
        border = max(i - 3 + 1, 0) // 3 * 3
        keys = torch.cat([x[:, border:i + 1]] + [x[:, 3 * g:3 * g + 3].mean(1, keepdim=True)
                                                  for g in range(border // 3)], dim=1)
        torch.testing.assert_close(out[:, i], lg.attention(x[:, i:i + 1], keys, keys)[0][:, 0], atol=1e-6,
                                   rtol=1e-5)


def test_hierarchical_memory_numbers_chunks_from_the_oldest_in_the_sequence():
    from companion.attention import HierarchicalMemory

    memory = HierarchicalMemory(4, 1, capacity=12, chunk_size=3, top_k=1)
    x = torch.randn(1, 6, 4)
    with torch.no_grad():  # positions 7 .. 12 of an episode: chunks 2, 3, 4, so three chunk columns
        _, w = memory.read_sequence(x, x, torch.zeros(1, 6, dtype=torch.bool), torch.tensor([7]), need_weights=True)
    assert w.chunks.shape[-1] == 3
