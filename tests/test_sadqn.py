"""SA-DQN (chapter 7): shapes, causality, the blocks against companion.attention, the TD loss per position."""

import dataclasses

import numpy as np
import pytest
import torch

from companion.__main__ import main
from companion.agents import AGENTS, SADQN, EntitySADQN, SADQNConfig
from companion.attention import MultiHeadAttention, causal_mask
from companion.buffers import SequenceBatch
from companion.records import RunDir

CPU = torch.device("cpu")


def _agent(obs_shape=(2,), n_actions=2, **changes):
    config = dataclasses.replace(SADQN.preset("gym"), **changes)
    torch.manual_seed(0)
    return SADQN(obs_shape, n_actions, config, CPU)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_history_shapes_and_weights(positions):
    agent = _agent(positions=positions, seq_len=6)
    q, weights = agent.q(torch.randn(3, 6, 2), need_weights=True)
    assert q.shape == (3, 6, 2) and len(weights) == agent.config.num_layers
    for w in weights:
        assert w.shape == (3, 4, 6, 6)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 6))
        assert (w.triu(1) == 0).all()  # nothing above the diagonal: no step attends to a later one
    with pytest.raises(ValueError, match="L <= 6"):
        agent.q(torch.randn(1, 7, 2))  # a whole window (K + 1 observations): no read needs that many


def test_the_q_value_at_t_ignores_later_observations():
    agent = _agent(seq_len=10)
    obs = torch.randn(2, 10, 2)
    changed = obs.clone()
    changed[:, 6:] = torch.randn(2, 4, 2) * 10
    with torch.no_grad():
        q, _ = agent.q(obs)
        q_changed, _ = agent.q(changed)
    torch.testing.assert_close(q[:, :6], q_changed[:, :6])
    assert not torch.allclose(q[:, 6:], q_changed[:, 6:])


def test_blocks_are_companion_attention():
    """A block's attention is companion.attention.MultiHeadAttention: the fast path, the manual path and a
    direct call agree."""
    agent = _agent(seq_len=5)
    block = agent.q.blocks[0]
    assert isinstance(block.attention, MultiHeadAttention)
    x = torch.randn(2, 6, agent.config.d_model)
    mask = causal_mask(6)
    with torch.no_grad():
        fast, _ = block(x, mask)
        manual, _ = block(x, mask, need_weights=True)
        h = block.norm1(x)
        direct = x + block.attention(h, h, h, mask=mask)[0]
        direct = direct + block.mlp(block.norm2(direct))
    torch.testing.assert_close(fast, manual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, direct)


def _batch(b=4, t=6, seed=0):
    rng = np.random.default_rng(seed)
    obs, next_obs = (rng.normal(size=(b, t, 2)).astype(np.float32) for _ in range(2))
    mask = np.ones((b, t), bool)
    mask[0, 3:] = False  # window 0: its episode ends at position 2
    terminated = np.zeros((b, t), bool)
    terminated[0, 2] = True
    return SequenceBatch(obs, rng.integers(0, 2, (b, t)), rng.normal(size=(b, t)).astype(np.float32), next_obs,
                         terminated, mask)


def test_td_loss_at_every_position_with_padding_masked_out():
    agent = _agent(seq_len=6)
    batch = _batch()
    loss, info = agent.loss(batch)
    assert torch.isfinite(loss) and np.isfinite(info["q"])
    # What follows window 0's episode end does not count: change it, the loss stays.
    batch.obs[0, 3:] += 5.0
    batch.next_obs[0, 3:] += 5.0
    batch.rewards[0, 3:] = 100.0
    torch.testing.assert_close(agent.loss(batch)[0], loss)
    # Every valid position counts, the last one included.
    batch.rewards[1, -1] += 1.0
    assert not torch.allclose(agent.loss(batch)[0], loss)


def test_acting_keeps_a_bounded_context_and_matches_the_unroll():
    agent = _agent(seq_len=3)  # windows of 3 transitions: the agent acts on up to 3 observations
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(7, 2)).astype(np.float32)
    state = agent.initial_state()
    for o in obs:
        _, state = agent.act(o, state, 0.0, rng)
    assert state.shape == (3, 2)
    np.testing.assert_array_equal(state, obs[-3:])
    with torch.no_grad():
        q, _ = agent.q(torch.as_tensor(obs[-3:])[None])
    action, _ = agent.act(obs[-1], obs[-3:-1], 0.0, rng)
    assert action == int(q[0, -1].argmax())
    maps = agent.attention_weights(obs[:3])
    assert len(maps) == 2 and maps[0].shape == (4, 3, 3)


@pytest.mark.parametrize("burn_in", [0, 2])
def test_acting_reads_only_positions_the_td_loss_trains(burn_in):
    """Regression: the first version acted on seq_len + 1 observations, so once an episode was longer than
    the window it read its actions at a position whose embedding the loss never trained; the second read
    that position for the bootstrap value of the window's last step. Now the network has exactly the
    positions the loss trains (the TD loss past the burn-in; the burn-in's through the later ones)."""
    agent = _agent(seq_len=4, burn_in=burn_in)
    buffer = agent.make_buffer(np.dtype(np.float32), seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):  # one long episode: every window is full
        buffer.add(rng.normal(size=2), int(rng.integers(2)), 1.0, rng.normal(size=2), False, False)
    agent.optimizer.zero_grad()
    agent.loss(buffer.sample(8))[0].backward()
    grad = agent.q.positions.embedding.grad.abs().sum(-1)  # (burn_in + seq_len,)
    assert grad.shape == (agent.context_len,)  # no position that only a bootstrap value would read
    assert (grad > 0).all()  # every position the agent acts from is trained
    state = None
    for o in rng.normal(size=(10, 2)).astype(np.float32):
        _, state = agent.act(o, state, 0.0, rng)
    assert len(state) == agent.context_len == burn_in + 4


def test_entity_variant_shapes_and_weights():
    config = EntitySADQN.preset("MinAtar")
    agent = EntitySADQN((4, 10, 10), 3, config, CPU)
    obs = np.random.default_rng(0).integers(0, 2, (5, 4, 10, 10), dtype=np.uint8)
    assert agent.q_values(obs).shape == (5, 3)
    (weights,) = agent.entity_attention(obs[0])
    assert weights.shape == (4, 64, 64)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="image observations"):
        EntitySADQN((4,), 2, config, CPU)


def test_gated_config_reaches_every_block_and_is_off_by_default():
    """GTrXL's gates (SADQNConfig.gated, gate_bias) in each block of both variants; none by default, so the
    default networks' parameters are the ungated ones."""
    from companion.attention import GRUGate

    assert not any(isinstance(m, GRUGate) for m in _agent().q.modules())
    assert not any(".gate" in k for k in _agent().q.state_dict())
    agent = _agent(gated=True, gate_bias=3.0)
    entity = EntitySADQN((4, 10, 10), 3, dataclasses.replace(EntitySADQN.preset("MinAtar"), gated=True,
                                                             gate_bias=3.0), CPU)
    for each in (agent, entity):
        assert len(each.q.blocks) == each.config.num_layers
        for block in each.q.blocks:
            assert isinstance(block.gate1, GRUGate) and isinstance(block.gate2, GRUGate)
            assert block.gate1.gate_bias == block.gate2.gate_bias == 3.0
    q, _ = agent.q(torch.randn(2, 5, 2))
    assert q.shape == (2, 5, 2) and torch.isfinite(q).all()
    rng = np.random.default_rng(0)
    state = None
    for o in rng.normal(size=(4, 2)).astype(np.float32):  # acting runs through the gated blocks too
        _, state = agent.act(o, state, 0.0, rng)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        SADQNConfig(d_model=30, num_heads=4).validate()
    with pytest.raises(ValueError, match="positions"):
        SADQNConfig(positions="rotary").validate()


@pytest.mark.parametrize(("algo", "env_id", "extra"), [
    ("sadqn", "CartPole-v1", ["--hide", "1,3"]),
    ("sadqn", "MinAtar/Breakout-v1", []),
    ("sadqn-entity", "MinAtar/Breakout-v1", []),
])
def test_sadqn_cli_smoke(tmp_path, capsys, algo, env_id, extra):
    out = tmp_path / "run"
    code = main(["train", "--algo", algo, "--env", env_id, *extra, "--budget", "quick", "--steps", "1000",
                 "--set", "learning_starts=100", "--set", "eval_every=1000", "--out", str(out), "--no-progress"])
    assert code == 0 and "done: 1000 steps" in capsys.readouterr().out
    assert np.isfinite(RunDir(out).updates()["loss"]).all()
    assert algo in AGENTS


def test_acts_on_the_last_position():
    """The action is read at the newest observation's position, whatever the others say."""
    agent = _agent(n_actions=3, seq_len=4)

    class LastPositionSaysTwo(torch.nn.Module):
        def forward(self, obs, need_weights=False):
            q = torch.zeros(*obs.shape[:2], 3)
            q[:, :-1, 0] = 1.0
            q[:, -1, 2] = 1.0
            return q, []

    agent.q = LastPositionSaysTwo()
    state, rng = None, np.random.default_rng(0)
    for _ in range(6):
        action, state = agent.act(np.zeros(2, np.float32), state, 0.0, rng)
        assert action == 2
