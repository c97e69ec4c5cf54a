"""The self-checks accept right answers and name the usual mistakes."""

import math

import torch

from companion.attention import causal_mask
from companion.exercises import check_attention, check_causal_mask, check_masked_attention, check_split_heads


def right_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def test_check_attention(capsys):
    assert check_attention(right_attention)
    assert not check_attention(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v)
    assert "not scaled" in capsys.readouterr().out
    assert not check_attention(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v)
    assert "instead of sqrt(d_k)" in capsys.readouterr().out
    assert not check_attention(lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -2) @ v)
    assert "over the queries" in capsys.readouterr().out

    def stub(q, k, v):
        raise NotImplementedError

    assert not check_attention(stub)
    assert "not implemented yet" in capsys.readouterr().out
    assert not check_attention(lambda q, k, v: q)
    assert "expected shape (2, 4, 3), got (2, 4, 8)" in capsys.readouterr().out


def test_check_masked_attention(capsys):
    def right(q, k, v, mask):
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), -1) @ v

    def after_softmax(q, k, v, mask):
        return (torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) * mask) @ v

    assert check_masked_attention(right)
    assert not check_masked_attention(after_softmax)
    assert "after the softmax" in capsys.readouterr().out


def test_check_causal_mask_and_split_heads(capsys):
    assert check_causal_mask(causal_mask)
    assert not check_causal_mask(lambda n: causal_mask(n).T)
    assert "transposed" in capsys.readouterr().out
    assert not check_causal_mask(lambda n: causal_mask(n).int())
    assert "boolean" in capsys.readouterr().out
    assert check_split_heads(lambda x, h: x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2))
    assert not check_split_heads(lambda x, h: x.reshape(x.shape[0], h, x.shape[1], -1))
    assert "mixes positions and heads" in capsys.readouterr().out
