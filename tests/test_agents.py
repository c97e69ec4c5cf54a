"""DQN and DRQN: shapes, targets, masks, recurrent state."""

import numpy as np
import pytest
import torch

from companion.agents import AGENTS, DQN, DRQN, DQNConfig, DRQNConfig
from companion.buffers import SequenceBatch, TransitionBatch

CPU = torch.device("cpu")


def _transitions(n=16, obs_dim=4, terminated=False):
    rng = np.random.default_rng(0)
    return TransitionBatch(rng.normal(size=(n, obs_dim)).astype(np.float32), rng.integers(0, 2, n),
                           rng.normal(size=n).astype(np.float32), rng.normal(size=(n, obs_dim)).astype(np.float32),
                           np.full(n, terminated))


def test_dqn_target_of_a_terminal_transition_is_the_reward():
    agent = DQN((4,), 2, DQNConfig(hidden=(8,), loss="mse"), CPU)
    batch = _transitions(terminated=True)
    loss, _ = agent.loss(batch)
    q = agent.q(torch.as_tensor(batch.obs)).gather(1, torch.as_tensor(batch.actions)[:, None]).squeeze(1)
    torch.testing.assert_close(loss, ((q - torch.as_tensor(batch.rewards)) ** 2).mean())


def test_dqn_double_target_uses_online_argmax_and_target_values():
    agent = DQN((4,), 3, DQNConfig(hidden=(8,), loss="mse", gamma=0.5), CPU)
    with torch.no_grad():
        for p in agent.target.parameters():
            p.add_(torch.randn_like(p))  # target differs from online
    batch = _transitions()
    loss, _ = agent.loss(batch)
    obs, nxt = torch.as_tensor(batch.obs), torch.as_tensor(batch.next_obs)
    with torch.no_grad():
        best = agent.q(nxt).argmax(1, keepdim=True)
        target = torch.as_tensor(batch.rewards) + 0.5 * agent.target(nxt).gather(1, best).squeeze(1)
        q = agent.q(obs).gather(1, torch.as_tensor(batch.actions)[:, None]).squeeze(1)
    torch.testing.assert_close(loss, ((q - target) ** 2).mean())


def test_dqn_acts_greedily_at_epsilon_zero_and_uniformly_at_one():
    agent = DQN((4,), 3, DQNConfig(hidden=(8,)), CPU)
    obs = np.ones(4, np.float32)
    greedy = int(agent.q(torch.as_tensor(obs)[None]).argmax())
    rng = np.random.default_rng(0)
    assert {agent.act(obs, None, 0.0, rng)[0] for _ in range(20)} == {greedy}
    counts = np.bincount([agent.act(obs, None, 1.0, rng)[0] for _ in range(3000)], minlength=3)
    assert (np.abs(counts / 3000 - 1 / 3) < 0.04).all()


@pytest.mark.parametrize("obs_shape", [(4,), (4, 10, 10), (4, 84, 84)])
def test_dqn_networks_for_each_observation_kind(obs_shape):
    agent = DQN(obs_shape, 5, DQNConfig(), CPU)
    obs = np.zeros((2, *obs_shape), np.uint8 if len(obs_shape) == 3 else np.float32)
    assert agent.q_values(obs).shape == (2, 5)


def test_sync_target_copies_the_online_network():
    agent = DQN((4,), 2, DQNConfig(hidden=(8,)), CPU)
    with torch.no_grad():
        agent.q.head.weight.add_(1.0)
    assert not torch.equal(agent.q.head.weight, agent.target.head.weight)
    agent.sync_target()
    assert torch.equal(agent.q.head.weight, agent.target.head.weight)


def _sequences(b=4, t=6, obs_dim=3, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, t), bool)
    mask[0, 3:] = False  # sequence 0's episode ended at position 2
    terminated = np.zeros((b, t), bool)
    terminated[0, 2] = True
    obs, next_obs = (rng.normal(size=(b, t, obs_dim)).astype(np.float32) for _ in range(2))
    return SequenceBatch(obs, rng.integers(0, 2, (b, t)), rng.normal(size=(b, t)).astype(np.float32), next_obs,
                         terminated, mask)


def test_drqn_shapes_and_state_threading():
    agent = DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16), CPU)
    q, (h, c) = agent.q(torch.zeros(5, 7, 3))
    assert q.shape == (5, 7, 2) and h.shape == (1, 5, 16)
    # Acting step by step equals one unroll over the sequence.
    obs = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    state, rng = agent.initial_state(), np.random.default_rng(0)
    stepwise = []
    for o in obs:
        with torch.no_grad():
            q_t, _ = agent.q(torch.as_tensor(o)[None, None], state)
        stepwise.append(q_t[0, 0])
        _, state = agent.act(o, state, 0.0, rng)
    with torch.no_grad():
        unrolled, _ = agent.q(torch.as_tensor(obs)[None])
    torch.testing.assert_close(torch.stack(stepwise), unrolled[0])
    assert agent.initial_state() is None  # zeros at every episode start


def test_drqn_loss_ignores_masked_positions_and_burn_in():
    agent = DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16), CPU)
    batch = _sequences()
    loss, _ = agent.loss(batch)
    # Garbage after the end of sequence 0's episode changes nothing (the LSTM only runs forward).
    batch.obs[0, 3:] = 1e3
    batch.next_obs[0, 3:] = -1e3
    batch.rewards[0, 3:] = 1e3
    torch.testing.assert_close(agent.loss(batch)[0], loss)
    # With burn-in, the first positions leave the loss.
    agent.config.burn_in = 2
    burned, _ = agent.loss(batch)
    batch.rewards[:, :2] = 1e3
    torch.testing.assert_close(agent.loss(batch)[0], burned)
    batch.rewards[1, 4] += 1.0
    assert not torch.allclose(agent.loss(batch)[0], burned)


def test_registry_and_presets():
    assert set(AGENTS) >= {"dqn", "drqn", "darqn", "sadqn", "sadqn-entity"}
    image_only = {"darqn", "sadqn-entity"}  # attention over image locations
    for name, cls in AGENTS.items():
        for family in ("MinAtar", "ALE"):
            cls.preset(family).validate()
        for family in ("gym", "popgym"):
            if name in image_only:
                with pytest.raises(ValueError, match="image locations"):
                    cls.preset(family)
            else:
                cls.preset(family).validate()
        with pytest.raises(ValueError, match="no .* preset"):
            cls.preset("mujoco")
    with pytest.raises(ValueError, match="loss"):
        DQNConfig(loss="l1").validate()
