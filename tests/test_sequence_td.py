"""The sequence agents' TD targets computed by hand (issue 14, item 13): DRQN, DARQN and SA-DQN.

A mutation probe of the suite found that dropping ``(1 - terminated)`` from the sequence target, taking
the Double-DQN argmax from the target network, a DARQN whose attention query is the LSTM's cell state,
and a sequence buffer that never samples its newest window all passed every test. These tests fail on
each of those.
"""

import dataclasses

import numpy as np
import pytest
import torch

from companion.agents import DARQN, DRQN, SADQN
from companion.agents.base import QLearningConfig, SequenceTensors, sequence_td
from companion.buffers import SequenceBatch, SequenceReplayBuffer

CPU = torch.device("cpu")
GAMMA = 0.5


def _batch(obs_shape, b=6, t=5, seed=0):
    """Windows of ``t`` transitions: window 0's episode terminates at step 2 (masked after it), window 1's
    is truncated at step 3 (its target bootstraps), the others run on."""
    rng = np.random.default_rng(seed)
    if len(obs_shape) == 3:
        obs, next_obs = (rng.integers(0, 2, (b, t, *obs_shape), dtype=np.uint8) for _ in range(2))
    else:
        obs, next_obs = (rng.normal(size=(b, t, *obs_shape)).astype(np.float32) for _ in range(2))
    next_obs[:, :-1] = obs[:, 1:]  # consecutive, as the buffer stores them
    mask = np.ones((b, t), bool)
    mask[0, 3:] = False
    terminated = np.zeros((b, t), bool)
    terminated[0, 2] = True
    rewards = rng.normal(size=(b, t)).astype(np.float32)
    return SequenceBatch(obs, rng.integers(0, 3, (b, t)), rewards, next_obs, terminated, mask)


def _perturb(network):
    torch.manual_seed(123)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.5 * torch.randn_like(p))


def _expected_loss(q_online, next_online, next_target, batch):
    """mean over valid steps of (Q(o_t, a_t) - y_t)^2, y_t = r_t + gamma (1 - d_t) Q'(o'_t, argmax Q(o'_t, .))."""
    actions = torch.as_tensor(batch.actions)
    q_taken = q_online.gather(2, actions[..., None])[..., 0]
    best = next_online.argmax(2, keepdim=True)
    bootstrap = next_target.gather(2, best)[..., 0]
    not_done = 1.0 - torch.as_tensor(batch.terminated).float()
    target = torch.as_tensor(batch.rewards) + GAMMA * not_done * bootstrap
    mask = torch.as_tensor(batch.mask).float()
    return (((q_taken - target) ** 2) * mask).sum() / mask.sum()


def _inputs(batch):
    return torch.cat([torch.as_tensor(batch.obs[:, :1]), torch.as_tensor(batch.next_obs)], 1)  # (B, T+1, ...)


def test_drqn_sequence_target_by_hand():
    config = dataclasses.replace(DRQN.preset("gym"), loss="mse", gamma=GAMMA, seq_len=5, hidden=(16,),
                                 lstm_size=16)
    torch.manual_seed(0)
    agent = DRQN((3,), 3, config, CPU)
    _perturb(agent.target)
    batch = _batch((3,))
    loss, _ = agent.loss(batch)
    with torch.no_grad():
        q_all, _ = agent.q(_inputs(batch))  # from a zero state: position t has read o_0 .. o_t
        next_target, _ = agent.target(_inputs(batch))
    expected = _expected_loss(q_all[:, :-1], q_all[:, 1:], next_target[:, 1:], batch)
    torch.testing.assert_close(loss.detach(), expected)


def test_darqn_sequence_target_by_hand():
    config = dataclasses.replace(DARQN.preset("MinAtar"), loss="mse", gamma=GAMMA, seq_len=5, lstm_size=16,
                                 attention_hidden=16, attention="soft")
    torch.manual_seed(0)
    agent = DARQN((4, 10, 10), 3, config, CPU)
    _perturb(agent.target)
    batch = _batch((4, 10, 10))
    loss, _ = agent.loss(batch)
    with torch.no_grad():
        q_all = agent.q(_inputs(batch))[0]
        next_target = agent.target(_inputs(batch))[0]
    expected = _expected_loss(q_all[:, :-1], q_all[:, 1:], next_target[:, 1:], batch)
    torch.testing.assert_close(loss.detach(), expected)


def test_sadqn_sequence_target_by_hand():
    """SA-DQN reads Q over the window's first K observations and the next-state values over its last K."""
    config = dataclasses.replace(SADQN.preset("gym"), loss="mse", gamma=GAMMA, seq_len=5, d_model=16, hidden=(16,))
    torch.manual_seed(0)
    agent = SADQN((3,), 3, config, CPU)
    _perturb(agent.target)
    batch = _batch((3,))
    loss, _ = agent.loss(batch)
    inputs = _inputs(batch)
    with torch.no_grad():
        q_online = agent.q(inputs[:, :-1])[0]
        next_online = agent.q(inputs[:, 1:])[0]
        next_target = agent.target(inputs[:, 1:])[0]
    torch.testing.assert_close(loss.detach(), _expected_loss(q_online, next_online, next_target, batch))
    # the last step's bootstrap reads exactly the context the agent would act on after o'_{K-1}
    rng = np.random.default_rng(0)
    state = None
    for o in inputs[2, 1:].numpy():
        _, state = agent.act(o, state, 0.0, rng)
    np.testing.assert_array_equal(state, inputs[2, 1:].numpy())


def test_darqn_attention_at_later_steps_by_hand():
    """g_t = softmax_i(w^T tanh(W_v v_i + W_h h_{t-1})), with h_{t-1} the LSTM's output (not its cell), at
    every step: at t = 0 both are zero, so only later steps can tell them apart."""
    config = dataclasses.replace(DARQN.preset("MinAtar"), lstm_size=16, attention_hidden=8, attention="soft")
    torch.manual_seed(0)
    agent = DARQN((4, 10, 10), 3, config, CPU)
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 2, (2, 4, 4, 10, 10), dtype=np.uint8))
    with torch.no_grad():
        q, _, extras = agent.q(obs)
        net, att = agent.q, agent.q.attention
        h = c = torch.zeros(2, 16)
        for t in range(4):
            v = net.cnn(obs[:, t])  # (B, L, D)
            scores = att.w_score(torch.tanh(att.w_key(v) + att.w_query(h)[:, None, :]))[..., 0]  # (B, L)
            g = torch.softmax(scores, dim=-1)
            torch.testing.assert_close(extras["weights"][:, t], g)
            h, c = net.lstm((g[:, :, None] * v).sum(1), (h, c))
            torch.testing.assert_close(q[:, t], net.head(h))
    assert not torch.allclose(extras["weights"][:, 2], extras["weights"][:, 3])


@pytest.mark.parametrize("n_added", [30, 75])  # before and after the ring wraps around (capacity 50)
def test_every_valid_window_start_is_sampled(n_added):
    """Reachability: every start whose window lies in the stored data is drawn, the newest one included."""
    buffer = SequenceReplayBuffer(50, (1,), np.float32, seq_len=4, seed=0)
    for i in range(n_added):
        buffer.add(np.array([i], np.float32), 0, 0.0, np.array([i + 1], np.float32), False, i % 10 == 9)
    starts = set()
    for _ in range(200):
        starts.update(int(x) for x in buffer.sample(64).obs[:, 0, 0])
    oldest = max(0, n_added - 49)  # a full ring keeps capacity - 1 valid transitions
    assert starts == set(range(oldest, n_added - 4 + 1))


def _one_step():
    return SequenceTensors(torch.zeros(1, 2, 1), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1),
                           torch.zeros(1, 1), torch.ones(1, 1))


def test_sequence_td_without_double_dqn_uses_the_target_networks_max():
    _, target, _ = sequence_td(torch.zeros(1, 1, 2), torch.tensor([[[5.0, 0.0]]]), torch.tensor([[[1.0, 3.0]]]),
                               _one_step(), QLearningConfig(double_dqn=False, gamma=1.0))
    assert target.item() == 3.0


def test_sequence_td_target_carries_no_gradient():
    next_q = torch.randn(1, 1, 2, requires_grad=True)
    _, target, _ = sequence_td(torch.zeros(1, 1, 2, requires_grad=True), next_q, next_q, _one_step(),
                               QLearningConfig())
    assert not target.requires_grad  # sg[y]: only Q(o_t, a_t) is moved
