"""The self-checks accept right answers and name the usual mistakes."""

import math

import pytest
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


# -- chapter 3 -------------------------------------------------------------------------------------------
def _gae(rewards, values, dones, next_value, gamma, lam, trace_mask=True, shift=False):
    import numpy as np

    advantages, following = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        next_v = next_value if t == len(rewards) - 1 else values[t + 1]
        done = dones[t + 1] if shift and t + 1 < len(dones) else (False if shift else dones[t])
        keep = 0.0 if done else 1.0
        delta = rewards[t] + gamma * keep * next_v - values[t]
        following = delta + gamma * lam * (keep if trace_mask else 1.0) * following
        advantages[t] = following
    return advantages


def test_check_gae(capsys):
    from companion.exercises import check_gae

    assert check_gae(_gae)
    assert not check_gae(lambda *args: _gae(*args, trace_mask=False))
    assert "runs back over the episode end" in capsys.readouterr().out
    assert not check_gae(lambda *args: _gae(*args, shift=True))
    assert "shifted by one step" in capsys.readouterr().out
    assert not check_gae(lambda r, v, d, nv, g, lam: _gae(r, v, d, nv, g, 1.0))
    assert "lambda is missing" in capsys.readouterr().out


def test_check_window_mask(capsys):
    from companion.attention import window_mask
    from companion.exercises import check_window_mask

    assert check_window_mask(lambda starts, k: window_mask(starts[None], k)[0, 0])
    assert not check_window_mask(lambda starts, k: window_mask(starts[None], k)[0, 0].T)
    assert "future leaks" in capsys.readouterr().out
    assert not check_window_mask(lambda starts, k: window_mask(torch.zeros_like(starts)[None], k)[0, 0])
    assert "crosses the episode start" in capsys.readouterr().out
    assert not check_window_mask(lambda starts, k: window_mask(starts[None], k + 1)[0, 0])
    assert "one step too long" in capsys.readouterr().out


def test_check_clipped_objective(capsys):
    from companion.exercises import check_clipped_objective

    def right(ratio, adv, eps):
        return -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()

    assert check_clipped_objective(right)
    assert not check_clipped_objective(lambda r, a, e: -right(r, a, e))
    assert "sign is flipped" in capsys.readouterr().out
    assert not check_clipped_objective(lambda r, a, e: -torch.max(r * a, r.clamp(1 - e, 1 + e) * a).mean())
    assert "max instead of min" in capsys.readouterr().out


# -- chapter 4 ---------------------------------------------------------------------------------------
def _descend(tree, u, go_left_on_equal=False, subtract=True, leaf_index=True):
    n, i = len(tree) // 2, 1
    while i < n:
        left = 2 * i
        if u < tree[left] or (go_left_on_equal and u == tree[left]):
            i = left
        else:
            if subtract:
                u -= tree[left]
            i = left + 1
    return i - n if leaf_index else i


def test_check_sum_tree_find(capsys):
    from companion.exercises import check_sum_tree_find

    assert check_sum_tree_find(_descend)
    assert not check_sum_tree_find(lambda t, u: _descend(t, u, leaf_index=False))
    assert "subtract n" in capsys.readouterr().out
    assert not check_sum_tree_find(lambda t, u: _descend(t, u, go_left_on_equal=True))
    assert "boundary goes to the left" in capsys.readouterr().out
    assert not check_sum_tree_find(lambda t, u: _descend(t, u, subtract=False))
    assert "subtract the left child" in capsys.readouterr().out
    assert not check_sum_tree_find(lambda t, u: float(_descend(t, u)))
    assert "expected an int" in capsys.readouterr().out


def test_check_is_weights(capsys):
    import numpy as np

    from companion.exercises import check_is_weights

    def right(priorities, indices, beta):
        probs = priorities / priorities.sum()
        raw = (len(priorities) * probs) ** -beta
        return raw[indices] / raw.max()

    assert check_is_weights(right)
    assert not check_is_weights(lambda p, i, b: right(p, i, b) * right(p, np.arange(len(p)), b).max()
                                / right(p, i, b).max())
    assert "batch's largest weight" in capsys.readouterr().out
    assert not check_is_weights(lambda p, i, b: right(p, i, -b))
    assert "wrong sign" in capsys.readouterr().out
    assert not check_is_weights(lambda p, i, b: (len(p) * p[i] / p.sum()) ** -b)
    assert "not normalised" in capsys.readouterr().out


def test_check_is_weights_rejects_weights_that_are_only_close(capsys):
    from companion.exercises import check_is_weights

    def fixed_beta(priorities, indices, beta):  # beta ignored: 0.5 instead of the 0.6 asked for
        raw = (len(priorities) * priorities / priorities.sum()) ** -0.5
        return raw[indices] / raw.max()

    assert not check_is_weights(fixed_beta)  # within a third of the right weights, and still wrong
    assert "not yet" in capsys.readouterr().out


def test_check_memory_mask(capsys):
    from companion.exercises import check_memory_mask

    def mask(starts, M, low=1, high=None, same_episode=True):
        high = M if high is None else high
        lag = torch.arange(len(starts))[:, None] - torch.arange(len(starts))[None, :]
        episode = starts.long().cumsum(0)
        same = episode[:, None] == episode[None, :] if same_episode else torch.ones_like(lag, dtype=torch.bool)
        return (lag >= low) & (lag <= high) & same

    assert check_memory_mask(mask)
    assert not check_memory_mask(lambda s, M: mask(s, M, low=0))
    assert "its own slot" in capsys.readouterr().out
    assert not check_memory_mask(lambda s, M: mask(s, M, low=-1))
    assert "future leaks" in capsys.readouterr().out
    assert not check_memory_mask(lambda s, M: mask(s, M, high=M - 1))
    assert "one step too short" in capsys.readouterr().out
    assert not check_memory_mask(lambda s, M: mask(s, M, same_episode=False))
    assert "crosses the episode start" in capsys.readouterr().out


def test_chapter5_checks_accept_solutions_and_name_mistakes(capsys):
    from companion.exercises import check_best_chunk_size, check_chunk_summaries

    def best(length, k):
        costs = [length / c + k * c for c in range(1, length + 1)]
        return 1 + costs.index(min(costs))

    assert check_best_chunk_size(best)
    assert not check_best_chunk_size(lambda length, k: round(math.sqrt(length)))
    assert "k left out" in capsys.readouterr().out

    def summaries(keys, c):
        return torch.stack([keys[g:g + c].mean(0) for g in range(0, len(keys), c)])

    assert check_chunk_summaries(summaries)
    assert not check_chunk_summaries(lambda keys, c: torch.stack([keys[g:g + c].sum(0) / c
                                                                  for g in range(0, len(keys), c)]))
    assert "divided by c" in capsys.readouterr().out
    assert not check_chunk_summaries(lambda keys, c: torch.stack([keys[g:g + c].sum(0)
                                                                  for g in range(0, len(keys), c)]))
    assert "sums, not means" in capsys.readouterr().out
    assert not check_chunk_summaries(lambda keys, c: torch.stack([keys[g:g + c].mean(0)
                                                                  for g in range(0, len(keys) - c + 1, c)]))
    assert "left out" in capsys.readouterr().out

    def larger_on_a_tie(length, k):
        costs = [length / c + k * c for c in range(1, length + 1)]
        return length - costs[::-1].index(min(costs))

    assert not check_best_chunk_size(larger_on_a_tie)


def test_chapter2_td_target_checks(capsys):
    from companion.exercises import check_double_dqn_target, check_td_targets

    def td(rewards, next_q, terminated, truncated, gamma):
        return rewards + gamma * (1.0 - terminated.double()) * next_q.max(1).values

    def td_truncation_ends(rewards, next_q, terminated, truncated, gamma):
        return rewards + gamma * (1.0 - (terminated | truncated).double()) * next_q.max(1).values

    assert check_td_targets(td)
    assert not check_td_targets(td_truncation_ends)
    assert "truncated transition is treated as terminated" in capsys.readouterr().out

    def double(rewards, online, target, terminated, gamma):
        return rewards + gamma * (1.0 - terminated.double()) * target.gather(1, online.argmax(1, keepdim=True))[:, 0]

    def swapped(rewards, online, target, terminated, gamma):
        return rewards + gamma * (1.0 - terminated.double()) * online.gather(1, target.argmax(1, keepdim=True))[:, 0]

    def plain(rewards, online, target, terminated, gamma):
        return rewards + gamma * (1.0 - terminated.double()) * target.max(1).values

    assert check_double_dqn_target(double)
    assert not check_double_dqn_target(swapped)
    assert "roles are swapped" in capsys.readouterr().out
    assert not check_double_dqn_target(plain)
    assert "plain DQN" in capsys.readouterr().out


def test_chapter6_reinforce_check(capsys):
    from companion.exercises import check_reinforce_gradient

    def autograd(scores, location, reward, baseline):
        scores = scores.clone().requires_grad_(True)
        ((reward - baseline) * torch.log_softmax(scores, 0)[location]).backward()
        return scores.grad

    def no_softmax_term(scores, location, reward, baseline):
        return (reward - baseline) * torch.nn.functional.one_hot(torch.tensor(location), len(scores)).double()

    assert check_reinforce_gradient(autograd)
    assert not check_reinforce_gradient(no_softmax_term)
    assert "softmax's own term" in capsys.readouterr().out


def test_chapter7_masked_td_loss_check(capsys):
    from companion.exercises import check_masked_td_loss

    def masked(q, y, mask):
        m = mask.double()
        return (((q - y) ** 2) * m).sum() / m.sum()

    def per_window(q, y, mask):
        m = mask.double()
        return ((((q - y) ** 2) * m).sum(1) / m.sum(1)).mean()

    assert check_masked_td_loss(masked)
    assert not check_masked_td_loss(per_window)
    assert "per-window means" in capsys.readouterr().out
    assert not check_masked_td_loss(lambda q, y, mask: ((q - y) ** 2).mean())
    assert "padding counts" in capsys.readouterr().out


def test_check_target_ceiling(capsys):
    from companion.agents.base import target_copy_ceiling
    from companion.exercises import check_target_ceiling

    assert check_target_ceiling(lambda n, g: (1 - g ** n.double()) / (1 - g))
    # The companion's ceiling at step 10n with a copy every 10 steps from step 0: the online network after n - 1
    # copies of a trained network, the same sum as the target network after n.
    assert check_target_ceiling(lambda n, g: torch.as_tensor(
        target_copy_ceiling(n.numpy() * 10, learning_starts=0, target_update=10, gamma=g)))
    assert "correct" in capsys.readouterr().out
    assert not check_target_ceiling(lambda n, g: (1 - g ** (n.double() + 1)) / (1 - g))
    assert "online network" in capsys.readouterr().out
    assert not check_target_ceiling(lambda n, g: n.double())
    assert "not discounted" in capsys.readouterr().out
    assert not check_target_ceiling(lambda n, g: g * (1 - g ** n.double()) / (1 - g))
    assert "first copy adds the reward" in capsys.readouterr().out
    assert not check_target_ceiling(lambda n, g: torch.full((6,), 1 / (1 - g), dtype=torch.float64))
    assert "the limit" in capsys.readouterr().out
    assert not check_target_ceiling(lambda n, g: (1 - g ** n.double()))
    assert "differ from the reference" in capsys.readouterr().out


def _onehot(scores, location):
    return torch.nn.functional.one_hot(torch.tensor(location), len(scores)).double()


@pytest.mark.parametrize(("check", "fn", "hint"), [
    ("check_td_targets", lambda r, q, te, tr, g: r + g * q.max(1).values, "(1 - terminated) is missing"),
    ("check_double_dqn_target", lambda r, on, ta, te, g: r + g * ta.gather(1, on.argmax(1, keepdim=True))[:, 0],
     "(1 - terminated) is missing"),
    ("check_reinforce_gradient", lambda s, loc, r, b: r * (_onehot(s, loc) - torch.softmax(s, 0)),
     "baseline is missing"),
    ("check_reinforce_gradient", lambda s, loc, r, b: (r + b) * (_onehot(s, loc) - torch.softmax(s, 0)),
     "baseline is added"),
    ("check_masked_td_loss", lambda q, y, m: (((q - y) ** 2) * m.double()).mean(), "still counted"),
    ("check_masked_td_loss", lambda q, y, m: (((q - y) ** 2) * m.double()).sum(), "a sum, not a mean"),
])
def test_each_mistake_gets_its_hint(capsys, check, fn, hint):
    from companion import exercises

    assert not getattr(exercises, check)(fn)
    assert hint in capsys.readouterr().out
