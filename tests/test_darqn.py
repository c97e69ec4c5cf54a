"""DARQN (chapter 6): shapes, attention, the paper's configuration, hard attention's REINFORCE, smoke runs."""

import dataclasses

import numpy as np
import pytest
import torch

from companion.__main__ import main
from companion.agents import AGENTS, DARQN, DARQNConfig
from companion.agents.base import DQNRMSprop, make_optimizer, schedule_step, sequence_td, sequence_tensors
from companion.buffers import SequenceBatch

CPU = torch.device("cpu")


def _batch(obs_shape, b=4, t=5, seed=0):
    rng = np.random.default_rng(seed)
    obs, next_obs = (rng.integers(0, 2, (b, t, *obs_shape), dtype=np.uint8) for _ in range(2))
    mask = np.ones((b, t), bool)
    mask[0, 3:] = False
    terminated = np.zeros((b, t), bool)
    terminated[0, 2] = True
    return SequenceBatch(obs, rng.integers(0, 3, (b, t)), rng.normal(size=(b, t)).astype(np.float32), next_obs,
                         terminated, mask)


@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_shapes_and_attention_weights_sum_to_one(attention):
    config = dataclasses.replace(DARQN.preset("MinAtar"), attention=attention)
    agent = DARQN((4, 10, 10), 3, config, CPU)
    obs = torch.randint(0, 2, (2, 6, 4, 10, 10), dtype=torch.uint8)
    q, (h, c), extras = agent.q(obs, sample=True)
    assert q.shape == (2, 6, 3) and h.shape == (2, 128) and extras["weights"].shape == (2, 6, 64)
    torch.testing.assert_close(extras["weights"].sum(-1), torch.ones(2, 6))
    if attention == "hard":
        assert extras["log_prob"].shape == extras["sampled"].shape == extras["baseline"].shape == (2, 6)
        assert (extras["log_prob"] <= 0).all()


def test_atari_paper_config_and_parameter_count():
    config = DARQN.atari_paper("soft")
    expected = dict(frame_stack=1, lstm_size=256, seq_len=4, batch_size=32, buffer_size=500_000,
                    learning_starts=25_000, train_freq=4, target_update=10_000, gamma=0.99, reward_clip=1.0,
                    loss="huber", grad_clamp=5.0, optimizer="rmsprop_dqn", lr=0.01, lr_end=0.00025,
                    lr_decay_steps=1_000_000, eps_start=1.0, eps_end=0.1, eval_epsilon=0.05,
                    anneal_after_learning_starts=True, sticky_actions=0.0, hard_gradients="original")
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.eps_fraction * 5_000_000 == 1_000_000  # epsilon anneals over 1M of the paper's 5M steps
    assert DARQN.atari_paper("hard").lr == 0.001
    agent = DARQN((1, 84, 84), 18, config, CPU)
    parts = agent.num_parameters_by_part()
    # Paper/original code: about 845k in all: CNN 183k, attention 132k, LSTM 526k, output 5k.
    assert parts["cnn"] == 182_624 and parts["lstm"] == 526_336 and parts["output"] == 4_626
    assert 131_000 <= parts["attention"] <= 132_000
    assert 840_000 <= sum(parts.values()) <= 850_000
    assert isinstance(agent.optimizer, DQNRMSprop)  # the Lua code's centred RMSProp, eps inside the root


def test_learning_rate_anneals_linearly():
    """From the start of learning (25k steps), as the Lua code counts, not from step 0."""
    config = dataclasses.replace(DARQN.atari_paper("soft"), lr_decay_steps=100)
    agent = DARQN((1, 84, 84), 4, config, CPU)
    start = config.learning_starts
    for step, lr in ((0, 0.01), (start, 0.01), (start + 50, (0.01 + 0.00025) / 2), (start + 100, 0.00025),
                     (start + 500, 0.00025)):
        agent.set_step(step)
        assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert schedule_step(config, start + 7) == 7 and schedule_step(config, 10) == 0  # epsilon reads it too


def test_state_resets_at_episode_start_and_acting_matches_unroll():
    agent = DARQN((4, 10, 10), 3, DARQN.preset("MinAtar"), CPU)
    obs = np.random.default_rng(0).integers(0, 2, (5, 4, 10, 10), dtype=np.uint8)
    rng, state = np.random.default_rng(0), agent.initial_state()
    assert state is None
    for o in obs:
        _, state = agent.act(o, state, 0.0, rng)
    agent.q.eval()
    with torch.no_grad():
        _, (h, _), _ = agent.q(torch.as_tensor(obs)[None])
    torch.testing.assert_close(state[0], h)
    assert agent.attention_map(obs).shape == (5, 64)


def test_hard_attention_loss_is_finite_and_its_baseline_learns():
    torch.manual_seed(0)
    config = dataclasses.replace(DARQN.preset("MinAtar"), attention="hard", lstm_size=32, attention_hidden=16)
    agent = DARQN((4, 10, 10), 3, config, CPU)
    batch = _batch((4, 10, 10))
    loss, info = agent.loss(batch)
    assert torch.isfinite(loss) and np.isfinite(info["reinforce"]) and np.isfinite(info["baseline_loss"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in agent.q.parameters() if p.grad is not None)
    assert agent.q.baseline.weight.grad.abs().sum() > 0
    # With every step terminal and rewarded 3, every target is exactly 3: a baseline that learns reaches it.
    batch.rewards[:] = 3.0
    batch.terminated[:] = True
    optimizer = torch.optim.Adam(agent.q.baseline.parameters(), lr=0.05)
    losses = []
    for _ in range(100):  # fit only the baseline
        loss, info = agent.loss(batch)
        losses.append(info["baseline_loss"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.05 * losses[0]


def test_darqn_refuses_vector_observations():
    with pytest.raises(ValueError, match="image observations"):
        DARQN((4,), 2, DARQNConfig(), CPU)
    assert AGENTS["darqn"] is DARQN


@pytest.mark.parametrize(("env_id", "extra"), [
    ("MinAtar/Breakout-v1", ["--steps", "300", "--set", "learning_starts=100", "--set", "attention=hard"]),
    ("ALE/Pong-v5", ["--steps", "120", "--set", "learning_starts=60", "--set", "batch_size=2",
                     "--set", "buffer_size=200"]),
])
def test_darqn_cli_smoke(tmp_path, capsys, env_id, extra):
    out = tmp_path / "run"
    assert main(["train", "--algo", "darqn", "--env", env_id, "--budget", "quick", "--out", str(out),
                 "--no-progress", *extra]) == 0
    assert "done:" in capsys.readouterr().out


def _hard_loss_parts(hard_gradients, seed=0):
    """DARQN-hard's TD loss and its baseline's squared error on one batch, as separate graphs."""
    torch.manual_seed(seed)
    config = dataclasses.replace(DARQN.preset("MinAtar"), attention="hard", lstm_size=32, attention_hidden=16,
                                 hard_gradients=hard_gradients)
    agent = DARQN((4, 10, 10), 3, config, CPU)
    batch = _batch((4, 10, 10), b=16)
    seq = sequence_tensors(batch, config, CPU, 0)
    torch.manual_seed(seed + 1)
    q_all, _, extras = agent.q(seq.inputs, sample=True)
    with torch.no_grad():
        next_q = agent.target(seq.inputs, sample=True)[0][:, 1:]
    td, target, _ = sequence_td(q_all[:, :-1], q_all[:, 1:], next_q, seq, config)
    baseline_loss = seq.masked_mean((target - extras["baseline"][:, :-1]) ** 2)
    return agent, td, baseline_loss, extras


def _grad_sum(loss, modules):
    params = [p for m in modules for p in m.parameters()]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(0.0 if g is None else g.abs().sum().item() for g in grads)


def test_hard_attention_gradients_follow_the_original_code():
    """Regression (issue 14): in the original (CMulTableHard) the TD loss sends no gradient into the attention
    (the soft-mixed examples get one constant across locations, which the softmax cancels), and the baseline's
    fit trains only the baseline layer. The first version let both reach further (kept as end_to_end)."""
    agent, td, baseline_loss, extras = _hard_loss_parts("original")
    assert extras["sampled"].any() and not extras["sampled"].all()  # both kinds of example are in the batch
    assert _grad_sum(td, [agent.q.attention]) == 0.0
    assert _grad_sum(td, [agent.q.lstm, agent.q.cnn, agent.q.head]) > 0  # the rest learns from the TD loss
    assert _grad_sum(baseline_loss, [agent.q.lstm, agent.q.attention, agent.q.cnn]) == 0.0
    assert _grad_sum(baseline_loss, [agent.q.baseline]) > 0
    # REINFORCE trains the attention and the CNN (through the location vectors), not the LSTM: the original
    # passes nothing back from the attention into h_{t-1}
    reinforce = -(extras["log_prob"] * extras["sampled"].float()).sum()
    assert _grad_sum(reinforce, [agent.q.attention]) > 0 and _grad_sum(reinforce, [agent.q.cnn]) > 0
    assert _grad_sum(reinforce, [agent.q.lstm]) == 0.0
    agent, td, baseline_loss, extras = _hard_loss_parts("end_to_end")
    assert _grad_sum(td, [agent.q.attention]) > 0
    reinforce = -(extras["log_prob"] * extras["sampled"].float()).sum()
    assert _grad_sum(reinforce, [agent.q.lstm]) > 0
    assert _grad_sum(baseline_loss, [agent.q.lstm, agent.q.attention, agent.q.cnn]) > 0


def test_hard_gradients_setting_is_checked():
    with pytest.raises(ValueError, match="hard_gradients"):
        DARQNConfig(hard_gradients="sometimes").validate()


def test_dqn_rmsprop_matches_the_lua_update_and_differs_from_torchs():
    """w <- w - lr grad / sqrt(g2 - g^2 + eps) (DQN's and DARQN's code); torch puts eps outside the root."""
    torch.manual_seed(0)
    w0 = torch.randn(5)
    grads = [torch.randn(5) * 0.01 for _ in range(4)]
    w = w0.clone().requires_grad_(True)
    optimizer = DQNRMSprop([w], lr=0.1, alpha=0.95, eps=0.01)
    g = torch.zeros(5)
    g2 = torch.zeros(5)
    expected = w0.clone()
    for grad in grads:
        w.grad = grad.clone()
        optimizer.step()
        g = 0.95 * g + 0.05 * grad
        g2 = 0.95 * g2 + 0.05 * grad**2
        expected = expected - 0.1 * grad / torch.sqrt(g2 - g**2 + 0.01)
    torch.testing.assert_close(w.detach(), expected)
    v = w0.clone().requires_grad_(True)
    torch_rmsprop = torch.optim.RMSprop([v], lr=0.1, alpha=0.95, eps=0.01, centered=True)
    for grad in grads:
        v.grad = grad.clone()
        torch_rmsprop.step()
    assert not torch.allclose(v.detach(), w.detach(), atol=1e-3)
    with pytest.raises(ValueError):
        DQNRMSprop([w], eps=0.0)


def test_atari_paper_env_is_the_deterministic_ale():
    """The paper preset turns sticky actions off (the 2015 papers' ALE); other presets keep v5's 0.25."""
    from companion.train import build_config, make_run_env

    for algo, expected in (("darqn", 0.0), ("dqn", 0.25)):
        run, agent_config = build_config(algo, "ALE/Pong-v5", budget="quick")
        env = make_run_env(run, agent_config)
        try:
            assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(expected)
        finally:
            env.close()


def test_atari_paper_optimizer_and_target():
    config = DARQN.atari_paper("soft")
    assert config.double_dqn is False  # the paper's (and the original code's) max over the target network
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    assert isinstance(optimizer, DQNRMSprop)
    assert optimizer.param_groups[0]["alpha"] == 0.95 and optimizer.param_groups[0]["eps"] == 0.01


def test_hard_attention_samples_at_every_step_when_acting():
    """In eval mode (acting, evaluation) every example samples its location; the soft mix is for training."""
    config = dataclasses.replace(DARQN.preset("MinAtar"), attention="hard", lstm_size=16, attention_hidden=8)
    net = DARQN((4, 10, 10), 3, config, CPU).q.eval()
    obs = torch.randint(0, 2, (8, 3, 4, 10, 10), dtype=torch.uint8)
    with torch.no_grad():
        _, _, extras = net(obs, sample=True)
    assert extras["sampled"].all()
    net.train()
    with torch.no_grad():
        _, _, extras = net(obs, sample=True)
    assert not extras["sampled"].all()


def test_reinforce_term_does_not_train_the_baseline():
    """The advantage is a constant for REINFORCE: the baseline learns from its squared error only."""
    grads = []
    for scale in (0.1, 0.0):
        torch.manual_seed(0)
        config = dataclasses.replace(DARQN.preset("MinAtar"), attention="hard", lstm_size=16, attention_hidden=8,
                                     reinforce_scale=scale)
        agent = DARQN((4, 10, 10), 3, config, CPU)
        torch.manual_seed(1)
        loss, _ = agent.loss(_batch((4, 10, 10), b=16))
        grads.append(torch.autograd.grad(loss, list(agent.q.baseline.parameters())))
    for with_reinforce, without in zip(*grads, strict=True):
        torch.testing.assert_close(with_reinforce, without)
