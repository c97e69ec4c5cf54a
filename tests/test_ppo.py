"""Actor-critic agents (chapter 3): GAE, PPO's loss, A2C as its special case, the three networks' acting
and learning paths, causality and episode boundaries, truncation, and the on-policy loop."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from companion.agents import A2C, AGENTS, PPO, PPOLSTM, PPOAttention
from companion.agents.actor_critic import explained_variance
from companion.agents.ppo import ppo_loss
from companion.buffers import gae
from companion.loops import LOOPS, LoopContext
from companion.loops.on_policy import CriticTracker, discounted_returns
from companion.records import RunDir

CPU = torch.device("cpu")


def _agent(cls, obs_dim=3, n_actions=2, **overrides):
    config = dataclasses.replace(cls.preset("gym"), **overrides)
    torch.manual_seed(0)
    return cls((obs_dim,), n_actions, config, CPU)


NETWORKS = {
    "mlp": (PPO, {}),
    "lstm": (PPOLSTM, {}),
    "attention": (PPOAttention, {}),
    "attention-critic-only": (PPOAttention, {"attend": "critic"}),
    "attention-2-layers": (PPOAttention, {"num_layers": 2, "context": 4}),
}


# -- GAE --------------------------------------------------------------------------------------------
def test_gae_by_hand_on_a_four_step_rollout():
    # One env; the episode ends at step 1, a new one starts at step 2.
    r = torch.tensor([[1.0], [2.0], [0.5], [1.0]])
    v = torch.tensor([[0.3], [0.6], [0.2], [0.4]])
    done = torch.tensor([[False], [True], [False], [False]])
    v_next = torch.tensor([0.7])
    g, lam = 0.9, 0.8
    d3 = 1.0 + g * 0.7 - 0.4
    d2 = 0.5 + g * 0.4 - 0.2
    d1 = 2.0 - 0.6  # done: no bootstrap from the next episode's value
    d0 = 1.0 + g * 0.6 - 0.3
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1  # nothing flows back over an episode end
    a0 = d0 + g * lam * a1
    advantages, returns = gae(r, v, done, v_next, g, lam)
    torch.testing.assert_close(advantages[:, 0], torch.tensor([a0, a1, a2, a3]))
    torch.testing.assert_close(returns, advantages + v)


def test_gae_lambda_one_is_the_monte_carlo_return_and_zero_the_td_error():
    rng = np.random.default_rng(0)
    r, v = (torch.as_tensor(rng.normal(size=(6, 3)), dtype=torch.float32) for _ in range(2))
    done = torch.zeros(6, 3, dtype=torch.bool)
    done[2, 1] = True
    v_next = torch.as_tensor(rng.normal(size=3), dtype=torch.float32)
    _, returns = gae(r, v, done, v_next, 0.95, 1.0)
    for env in range(3):
        end = 3 if env == 1 else 6
        expected = discounted_returns(r[:end, env].tolist(), 0.95, 0.0 if env == 1 else float(v_next[env]))
        np.testing.assert_allclose(returns[:end, env].numpy(), expected, rtol=1e-5, atol=1e-5)
    advantages, _ = gae(r, v, done, v_next, 0.95, 0.0)
    following = torch.cat([v[1:], v_next[None]])
    torch.testing.assert_close(advantages, r + 0.95 * following * (~done) - v)


# -- PPO's loss -------------------------------------------------------------------------------------
def test_ppo_loss_by_hand():
    logits = torch.tensor([[0.2, -0.1], [1.0, 0.0], [0.0, 0.5], [-0.3, 0.3]])
    actions = torch.tensor([0, 0, 1, 1])
    new = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    old = new - torch.tensor([0.5, -0.5, 0.05, 0.0])  # ratios e^0.5, e^-0.5, e^0.05, 1
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    values, old_values, returns = torch.tensor([1.0, 2.0, 0.0, 1.0]), torch.zeros(4), torch.tensor([0.0, 1.0, 1.0, 1.0])
    loss, info = ppo_loss(logits, values, actions, old, old_values, adv, returns, clip_range=0.2, clip_range_vf=0.0,
                          normalize=False, vf_coef=0.5, ent_coef=0.01)
    ratio = (new - old).exp()
    clipped = ratio.clamp(0.8, 1.2)
    policy = -torch.min(ratio * adv, clipped * adv).mean()
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()
    expected = policy + 0.5 * ((values - returns) ** 2).mean() - 0.01 * entropy
    torch.testing.assert_close(loss, expected)
    assert info["clip_fraction"] == pytest.approx(0.5)  # e^0.5 and e^-0.5 lie outside [0.8, 1.2]
    # Clipped value loss: the larger of the plain and the clipped error.
    loss_vf, info_vf = ppo_loss(logits, values, actions, old, old_values, adv, returns, clip_range=0.2,
                                clip_range_vf=0.5, normalize=False, vf_coef=1.0, ent_coef=0.0)
    v_clipped = old_values + (values - old_values).clamp(-0.5, 0.5)
    expected_vf = torch.max((values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    assert info_vf["value_loss"] == pytest.approx(expected_vf.item())


def test_a2c_is_ppo_with_one_step_per_rollout():
    """At the old parameters the ratio is 1, so PPO's clipped loss has A2C's gradient -A grad log pi."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 4)
    obs, actions, adv = torch.randn(8, 3), torch.randint(0, 4, (8,)), torch.randn(8)
    with torch.no_grad():
        old = torch.log_softmax(net(obs), -1).gather(1, actions[:, None]).squeeze(1)
    grads = []
    for clip in (0.2, None):
        net.zero_grad()
        loss, _ = ppo_loss(net(obs), torch.zeros(8), actions, old, torch.zeros(8), adv, torch.zeros(8),
                           clip_range=clip, clip_range_vf=0.0, normalize=False, vf_coef=0.0, ent_coef=0.0)
        loss.backward()
        grads.append(net.weight.grad.clone())
    net.zero_grad()
    a2c = -(adv * torch.log_softmax(net(obs), -1).gather(1, actions[:, None]).squeeze(1)).mean()
    a2c.backward()
    torch.testing.assert_close(grads[0], net.weight.grad)
    torch.testing.assert_close(grads[1], net.weight.grad)
    config = A2C.preset("gym")
    assert config.n_epochs == 1 and config.batch_size >= config.n_envs * config.n_steps
    with pytest.raises(ValueError, match="one gradient step per rollout"):
        A2C((3,), 2, dataclasses.replace(config, n_epochs=4), CPU)


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0)
    assert np.isnan(explained_variance(target, torch.ones(4)))


# -- networks: acting equals learning ---------------------------------------------------------------
def _episode_starts(steps, envs, seed=0):
    rng = np.random.default_rng(seed)
    starts = rng.random((steps, envs)) < 0.15
    starts[0] = True
    return starts


@pytest.mark.parametrize("name", list(NETWORKS))
def test_acting_step_by_step_equals_rereading_the_rollout(name):
    """The loop acts with ``step`` (state carried, reset at episode starts); learning re-reads the rollout with
    ``sequence`` from the stored state. The same numbers, or PPO's first ratio would not be 1."""
    cls, overrides = NETWORKS[name]
    agent = _agent(cls, **overrides)
    steps, envs, prefix = 20, 4, agent.history_prefix
    obs = torch.randn(steps, envs, 3)
    starts = _episode_starts(steps, envs)
    # Acting starts mid-run: a warm-up rollout leaves a state and the prefix of the steps before.
    warm = torch.randn(prefix, envs, 3)
    warm_starts = _episode_starts(max(prefix, 1), envs, seed=1)[:prefix]
    state = agent.rollout_state(envs)
    with torch.no_grad():
        for t in range(prefix):
            state = agent.reset_state(state, warm_starts[t])
            _, _, state = agent.net.step(warm[t], state)
        initial = state
        logits, values = [], []
        for t in range(steps):
            state = agent.reset_state(state, starts[t])
            step_logits, step_values, state = agent.net.step(obs[t], state)
            logits.append(step_logits)
            values.append(step_values)
        reread_logits, reread_values = agent.net.sequence(
            obs.transpose(0, 1), torch.as_tensor(starts).T, initial, warm.transpose(0, 1),
            torch.as_tensor(warm_starts).T)
    torch.testing.assert_close(torch.stack(logits, 1), reread_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(values, 1), reread_values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "attention", "attention-2-layers"])
def test_no_step_leaks_into_an_earlier_one_or_across_an_episode_start(name):
    cls, overrides = NETWORKS[name]
    agent = _agent(cls, **overrides)
    obs, starts = torch.randn(2, 12, 3), torch.zeros(2, 12, dtype=torch.bool)
    starts[:, 0] = True
    starts[1, 6] = True  # env 1: a new episode at step 6
    state = agent.net.initial_state(2)
    with torch.no_grad():
        logits, values = agent.net.sequence(obs, starts, state)
        later = obs.clone()
        later[:, 8:] += 5.0  # the future changes ...
        logits_later, values_later = agent.net.sequence(later, starts, state)
        earlier = obs.clone()
        earlier[1, :6] += 5.0  # env 1's previous episode changes ...
        logits_earlier, values_earlier = agent.net.sequence(earlier, starts, state)
    torch.testing.assert_close(values[:, :8], values_later[:, :8])  # ... the past does not move
    assert not torch.allclose(values[:, 8:], values_later[:, 8:])
    torch.testing.assert_close(values[1, 6:], values_earlier[1, 6:])  # ... the new episode does not see it
    torch.testing.assert_close(logits[1, 6:], logits_earlier[1, 6:])
    assert not torch.allclose(values[1, :6], values_earlier[1, :6])


def test_attention_reads_exactly_the_last_k_steps():
    agent = _agent(PPOAttention, context=4)
    obs, starts = torch.randn(1, 10, 3), torch.zeros(1, 10, dtype=torch.bool)
    starts[0, 0] = True
    with torch.no_grad():
        _, values = agent.net.sequence(obs, starts, None)
        for back, moves in ((4, False), (3, True)):  # step 9 sees steps 6..9
            changed = obs.clone()
            changed[0, 9 - back] += 5.0
            _, changed_values = agent.net.sequence(changed, starts, None)
            assert torch.allclose(values[0, 9], changed_values[0, 9]) != moves, back


def test_critic_only_attention_leaves_the_actor_on_the_current_observation():
    agent = _agent(PPOAttention, attend="critic")
    obs, starts = torch.randn(1, 8, 3), torch.zeros(1, 8, dtype=torch.bool)
    starts[0, 0] = True
    changed = obs.clone()
    changed[0, :7] += 3.0  # the whole past changes, the last observation does not
    with torch.no_grad():
        logits, values = agent.net.sequence(obs, starts, None)
        logits2, values2 = agent.net.sequence(changed, starts, None)
    torch.testing.assert_close(logits[0, 7], logits2[0, 7])
    assert not torch.allclose(values[0, 7], values2[0, 7])


def test_kv_cache_holds_k_minus_one_steps_and_forgets_at_episode_ends():
    agent = _agent(PPOAttention, context=5)
    cache, valid = agent.rollout_state(2)
    assert cache[0][0].shape == (2, 4, 4, 16) and valid.shape == (2, 4) and not valid.any()
    state = (cache, valid)
    for _ in range(6):
        _, _, _, state = agent.step(np.zeros((2, 3), np.float32), state)
    assert state[1].all()
    state = agent.reset_state(state, np.array([True, False]))
    assert not state[1][0].any() and state[1][1].all()


# -- acting -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NETWORKS))
def test_evaluation_acts_greedily_and_uniformly_at_epsilon_one(name):
    cls, overrides = NETWORKS[name]
    agent = _agent(cls, n_actions=3, **overrides)
    obs = np.ones(3, np.float32)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        logits, _, _ = agent.net.step(torch.as_tensor(obs)[None], agent.initial_state())
    greedy = int(logits[0].argmax())
    assert {agent.act(obs, agent.initial_state(), 0.0, rng)[0] for _ in range(20)} == {greedy}
    counts = np.bincount([agent.act(obs, agent.initial_state(), 1.0, rng)[0] for _ in range(3000)], minlength=3)
    assert (np.abs(counts / 3000 - 1 / 3) < 0.04).all()
    assert agent.policy_network().training  # act() leaves the network in training mode


def test_registry_presets_and_bad_settings():
    for name in ("ppo", "a2c", "ppo-lstm", "ppo-attn"):
        for family in ("gym", "popgym", "MinAtar", "ALE"):
            AGENTS[name].preset(family).validate()
        with pytest.raises(ValueError, match="no .* preset"):
            AGENTS[name].preset("mujoco")
    ppo = PPO.preset("gym")  # RL-Zoo's CartPole-v1
    assert (ppo.n_envs, ppo.n_steps, ppo.batch_size, ppo.n_epochs, ppo.gamma, ppo.gae_lambda) == (8, 32, 256, 20,
                                                                                                   0.98, 0.8)
    with pytest.raises(ValueError, match="attend"):
        dataclasses.replace(PPOAttention.preset("gym"), attend="actor").validate()
    with pytest.raises(ValueError, match="vector"):
        dataclasses.replace(ppo, vector="threads").validate()


# -- the on-policy loop ------------------------------------------------------------------------------
class _Cut(gym.Env):
    """Observation = the step count; reward 1; a time limit cuts every episode after 3 steps."""

    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, False, self.t >= 3, {}


class _Stop:
    requested = False


class _Bar:
    n = 0

    def update(self, k):
        self.n += k

    def set_postfix(self, **kwargs):
        pass


def _loop_context(agent, env_fn, tmp_path, total_steps):
    records = RunDir.create(tmp_path / "run", {"run": {}, "agent": {}})
    return LoopContext(agent=agent, env_fn=env_fn, records=records, seed=0, total_steps=total_steps,
                       eval_every=10**9, checkpoint_every=10**9, evaluate=lambda step: 0.0,
                       checkpoint=lambda state, replay: None, stop=_Stop(), stop_at=None, progress=_Bar())


def _capture_rollouts(agent):
    seen = []
    update = agent.update

    def capture(rollout):
        seen.append(rollout)
        return update(rollout)

    agent.update = capture
    return seen


def test_a_time_limit_bootstraps_from_the_final_observation(tmp_path):
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=4, batch_size=8, n_epochs=1)
    rollouts = _capture_rollouts(agent)
    LOOPS["on_policy"](_loop_context(agent, _Cut, tmp_path, total_steps=8))
    rollout = rollouts[0]
    with torch.no_grad():
        final_value = agent.net(torch.tensor([[3.0]]))[1]
    g = agent.config.gamma
    # Steps 0..3 of each env: observations 0, 1, 2 then a new episode's 0; step 2 is cut by the time limit.
    assert rollout.obs[:, 0, 0].tolist() == [0.0, 1.0, 2.0, 0.0]
    assert rollout.dones[:, 0].tolist() == [False, False, True, False]
    assert rollout.episode_starts[:, 0].tolist() == [True, False, False, True]
    torch.testing.assert_close(rollout.rewards[2], (1.0 + g * final_value).expand(2))
    torch.testing.assert_close(rollout.rewards[[0, 1, 3]], torch.ones(3, 2))
    metrics = RunDir(tmp_path / "run").metrics()
    assert list(metrics["length"]) == [3, 3] and list(metrics["return"]) == [3.0, 3.0]


@pytest.mark.parametrize("name", ["mlp", "lstm", "attention-2-layers"])
def test_ppo_first_ratio_is_one_on_the_loops_rollouts(tmp_path, name):
    """On rollouts the loop really collected (the second one starts mid-episode, from a carried state and a
    prefix of earlier steps), the learning path reproduces the acting path's log-probabilities and values."""
    cls, overrides = NETWORKS[name]
    config = dict(n_envs=3, n_steps=16, batch_size=48, n_epochs=1, **overrides)
    agent = _agent(cls, obs_dim=2, **config)
    rollouts = _capture_rollouts(agent)
    snapshots = []
    update = agent.update

    def check_then_update(rollout):
        for batch in agent.minibatches(rollout):
            logits, values = agent.evaluate_batch(batch)
            log_probs = torch.log_softmax(logits, -1).gather(1, batch["actions"].reshape(-1, 1)).squeeze(1)
            snapshots.append(((log_probs - batch["log_probs"].flatten()).abs().max().item(),
                              (values - batch["values"].flatten()).abs().max().item()))
        return update(rollout)

    agent.update = check_then_update
    from companion.envs import make_env

    LOOPS["on_policy"](_loop_context(agent, lambda: make_env("popgym-PositionOnlyCartPoleEasy-v0"), tmp_path,
                                     total_steps=3 * 16 * 3))
    assert len(rollouts) == 3 and len(snapshots) >= 3
    assert max(s[0] for s in snapshots) < 1e-5 and max(s[1] for s in snapshots) < 1e-5


def test_without_refreshing_its_cache_after_an_update_the_attention_agent_acts_on_stale_keys(tmp_path):
    """The bug the first version had (chapter 3 tells it): keys and values cached under the parameters before
    an update no longer match what learning recomputes, so the first ratio of the next rollout is not 1."""
    agent = _agent(PPOAttention, obs_dim=2, n_envs=3, n_steps=16, batch_size=48, n_epochs=1, context=4)
    agent.refresh_state = lambda state, prefix_obs, prefix_starts: state  # the bug
    gaps = []
    update = agent.update

    def check_then_update(rollout):
        for batch in agent.minibatches(rollout):
            _, values = agent.evaluate_batch(batch)
            gaps.append((values - batch["values"].flatten()).abs().max().item())
        return update(rollout)

    agent.update = check_then_update
    from companion.envs import make_env

    LOOPS["on_policy"](_loop_context(agent, lambda: make_env("popgym-PositionOnlyCartPoleEasy-v0"), tmp_path,
                                     total_steps=3 * 16 * 2))
    assert gaps[0] < 1e-5 and gaps[1] > 1e-2  # the first rollout is fine; the second starts on stale keys


def test_critic_tracker_against_discounted_returns():
    tracker = CriticTracker(gamma=0.5)
    tracker.add_episode([1.0, 1.0], [1.0, 2.0], bootstrap=0.0)  # returns 2.0, 2.0: errors 1, 1
    tracker.add_episode([0.0], [1.0], bootstrap=4.0)  # return 1 + 0.5 * 4 = 3: error 3
    out = tracker.flush()
    assert out["value_rmse_mc"] == pytest.approx(np.sqrt((1 + 1 + 9) / 3))
    returns, errors = np.array([2.0, 2.0, 3.0]), np.array([1.0, 1.0, 3.0])
    assert out["explained_variance_mc"] == pytest.approx(1 - errors.var() / returns.var())
    assert all(np.isnan(v) for v in tracker.flush().values())  # the block is reset
