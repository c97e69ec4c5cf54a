"""DQN and DRQN: shapes, targets, masks, recurrent state."""

import numpy as np
import pytest
import torch

from companion.agents import AGENTS, DQN, DRQN, DQNConfig, DRQNConfig
from companion.agents.base import lr_scheduled, scheduled_lr
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


def test_drqn_replay_state_is_h_then_c_and_zeros_at_an_episode_start():
    assert DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16), CPU).replay_state_size == 0  # off by default
    agent = DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16, stored_state=True), CPU)
    assert agent.replay_state_size == 32
    zeros = agent.replay_state(None)
    assert zeros.shape == (32,) and zeros.dtype == np.float32 and not zeros.any()
    rng = np.random.default_rng(0)
    _, state = agent.act(np.ones(3, np.float32), None, 0.0, rng)
    h, c = state  # (1, 1, 16) each
    stored = agent.replay_state(state)
    assert stored.shape == (32,) and stored.dtype == np.float32
    np.testing.assert_array_equal(stored, np.concatenate([h.reshape(-1).numpy(), c.reshape(-1).numpy()]))
    assert not np.array_equal(stored[:16], stored[16:])  # h and c are different halves


def _loss_and_start_states(agent, batch):
    """``agent.loss(batch)``'s loss, and the LSTM state each network (``"q"``, ``"target"``) was unrolled from."""
    seen = {}
    hooks = [net.register_forward_pre_hook(lambda module, args, name=name: seen.__setitem__(name, args[1]))
             for name, net in (("q", agent.q), ("target", agent.target))]
    try:
        loss, _ = agent.loss(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return loss, seen


def test_drqn_stored_state_starts_both_unrolls_from_the_batch_states():
    """R2D2's stored state: the online and the target network unroll each window from ``batch.states``
    (split into h and c); with states that are all zeros the loss is the zero-state loss, and without
    stored_state the batch's states are ignored."""
    torch.manual_seed(0)
    agent = DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16, stored_state=True), CPU)
    with torch.no_grad():
        for p in agent.target.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the target differs from the online network
    batch = _sequences()
    states = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    batch.states = states
    loss, seen = _loss_and_start_states(agent, batch)
    for name in ("q", "target"):
        h, c = seen[name]
        assert h.shape == c.shape == (1, 4, 16), name
        np.testing.assert_array_equal(h[0].numpy(), states[:, :16])
        np.testing.assert_array_equal(c[0].numpy(), states[:, 16:])
    batch.states = states + 1.0
    assert not torch.allclose(agent.loss(batch)[0], loss)  # other stored states, another loss
    batch.states = np.zeros_like(states)
    from_zeros, _ = agent.loss(batch)
    agent.config.stored_state = False
    torch.testing.assert_close(from_zeros, agent.loss(batch)[0])
    batch.states = states  # without stored_state the states are ignored
    torch.testing.assert_close(agent.loss(batch)[0], from_zeros)
    batch.states = None
    torch.testing.assert_close(agent.loss(batch)[0], from_zeros)
    agent.config.stored_state = True
    with pytest.raises(ValueError, match="carries no states"):
        agent.loss(batch)


def test_drqn_stored_state_start_is_contiguous_and_the_burn_in_stays_out_of_the_loss():
    """With stored_state the window's start state is handed to the LSTM as contiguous (1, B, H) tensors
    (cuDNN refuses a non-contiguous hx: "rnn: hx is not contiguous", which the CPU does not check), and a
    burn-in still only warms the state up: rewards and actions at its positions leave the loss unchanged."""
    torch.manual_seed(0)
    agent = DRQN((3,), 2, DRQNConfig(hidden=(8,), lstm_size=16, stored_state=True, burn_in=2), CPU)
    batch = _sequences()
    batch.states = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    burned, seen = _loss_and_start_states(agent, batch)
    for name in ("q", "target"):
        assert all(t.is_contiguous() for t in seen[name]), name
    batch.rewards[:, :2] = 1e3
    batch.actions[:, :2] = 1 - batch.actions[:, :2]
    torch.testing.assert_close(agent.loss(batch)[0], burned)
    agent.config.burn_in = 0  # without burn-in the same positions count
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


@pytest.mark.parametrize(("fields", "expected"), [
    # warm-up only: 0 up to learning_starts (100), then linear to lr over lr_warmup (50) steps
    (dict(lr_warmup=50), {0: 0.0, 100: 0.0, 110: 2e-4, 125: 5e-4, 150: 1e-3, 1000: 1e-3}),
    # decay only: from step 0, 1e-3 to 1e-4 over 200 steps
    (dict(lr_end=1e-4, lr_decay_steps=200), {0: 1e-3, 100: 5.5e-4, 125: 4.375e-4, 200: 1e-4, 1000: 1e-4}),
    # both: the decay's value times the warm-up factor
    (dict(lr_end=1e-4, lr_decay_steps=200, lr_warmup=50),
     {0: 0.0, 100: 0.0, 125: 4.375e-4 * 0.5, 150: 3.25e-4, 200: 1e-4, 1000: 1e-4}),
    # both, the decay counted from learning_starts as the Lua code did (the warm-up always is)
    (dict(lr_end=1e-4, lr_decay_steps=200, lr_warmup=50, anneal_after_learning_starts=True),
     {0: 0.0, 100: 0.0, 125: 8.875e-4 * 0.5, 150: 7.75e-4, 300: 1e-4, 1000: 1e-4}),
    # neither: constant (lr_end without lr_decay_steps schedules nothing)
    (dict(), {0: 1e-3, 500: 1e-3}),
    (dict(lr_end=1e-4), {0: 1e-3, 500: 1e-3}),
])
def test_scheduled_lr_by_hand_and_set_step_applies_it(fields, expected):
    config = DQNConfig(hidden=(8,), lr=1e-3, learning_starts=100, **fields)
    config.validate()
    assert lr_scheduled(config) == ("lr_warmup" in fields or "lr_decay_steps" in fields)
    agent = DQN((4,), 2, config, CPU)
    for step, lr in expected.items():
        assert scheduled_lr(config, step) == pytest.approx(lr, abs=1e-12), step
        agent.set_step(step)
        assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12), step


def test_negative_lr_warmup_is_refused():
    with pytest.raises(ValueError, match="lr_warmup must be >= 0, got -1"):
        DQNConfig(lr_warmup=-1).validate()

