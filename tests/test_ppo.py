"""Actor-critic agents (chapter 3): GAE, PPO's loss, A2C as its special case, the three networks' acting
and learning paths, causality and episode boundaries, truncation, and the on-policy loop."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from companion.agents import A2C, AGENTS, PPO, PPOLSTM, PPOAttention, PPOHierarchicalMemory, PPOMemory
from companion.agents.actor_critic import explained_variance
from companion.agents.ppo import ppo_loss
from companion.buffers import Rollout, gae
from companion.loops import LOOPS, LoopContext, on_policy
from companion.loops.on_policy import CriticTracker, discounted_returns
from companion.records import RunDir
from companion.train import RandomPolicy, evaluate
from companion.utils import episode_seed

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
    "memory": (PPOMemory, {"memory": 6}),
    "hierarchical-memory": (PPOHierarchicalMemory, {"memory": 6, "chunk_size": 2, "top_k": 2}),
    # chunks of 3 with one kept: rollouts of 16 steps and a prefix of 6 do not line up with the chunks
    "hierarchical-memory-3": (PPOHierarchicalMemory, {"memory": 6, "chunk_size": 3, "top_k": 1}),
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


@pytest.mark.parametrize("name", ["lstm", "attention", "attention-2-layers", "memory", "hierarchical-memory"])
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
    for name in ("ppo", "a2c", "ppo-lstm", "ppo-attn", "ppo-memory", "ppo-hmemory"):
        for family in ("gym", "popgym", "MinAtar", "ALE"):
            AGENTS[name].preset(family).validate()
        with pytest.raises(ValueError, match="no .* preset"):
            AGENTS[name].preset("mujoco")
    ppo = PPO.preset("gym")  # RL-Zoo's CartPole-v1
    assert (ppo.n_envs, ppo.n_steps, ppo.batch_size, ppo.n_epochs, ppo.gamma, ppo.gae_lambda) == (8, 32, 256, 20,
                                                                                                   0.98, 0.8)
    with pytest.raises(ValueError, match="attend"):
        dataclasses.replace(PPOAttention.preset("gym"), attend="actor").validate()
    hmemory = PPOHierarchicalMemory.preset("gym")
    for bad, match in (({"memory": 10, "chunk_size": 3}, "multiple"), ({"top_k": 0}, "top_k"),
                       ({"read": "tree"}, "read")):
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(hmemory, **bad).validate()
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
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=4, batch_size=8, n_epochs=1, lr=0.0)  # V unchanged after
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


@pytest.mark.parametrize("name", ["mlp", "lstm", "attention", "attention-2-layers", "memory",
                                  "hierarchical-memory", "hierarchical-memory-3"])
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


# -- more that the mutation probe asked for: terminations, carried states, schedules, minibatches, seeds --------
class _End(_Cut):
    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.t >= 3, False, {}


class _Seeds(_Cut):
    log: list = []

    def reset(self, *, seed=None, options=None):
        type(self).log.append(seed)
        return super().reset(seed=seed, options=options)


def test_a_terminal_step_is_not_bootstrapped(tmp_path):
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=4, batch_size=8, n_epochs=1)
    rollouts = _capture_rollouts(agent)
    LOOPS["on_policy"](_loop_context(agent, _End, tmp_path, total_steps=8))
    assert rollouts[0].dones[:, 0].tolist() == [False, False, True, False]
    torch.testing.assert_close(rollouts[0].rewards, torch.ones(4, 2))


class _Shifted(_Cut):
    """_Cut with observations 1, 2, 3 (and the final 4): an LSTM reading 0 from a zero state stays at zero."""

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return obs + 1, info

    def step(self, action):
        obs, *rest = super().step(action)
        return (obs + 1, *rest)


def test_a_memory_agent_bootstraps_from_its_carried_state(tmp_path):
    agent = _agent(PPOLSTM, obs_dim=1, n_envs=1, n_steps=4, batch_size=4, n_epochs=1, lr=0.0)
    rollouts = _capture_rollouts(agent)
    LOOPS["on_policy"](_loop_context(agent, _Shifted, tmp_path, total_steps=4))
    r, net, g = rollouts[0], agent.net, agent.config.gamma
    with torch.no_grad():
        s = net.initial_state(1)
        for o in (1.0, 2.0, 3.0):
            _, _, s = net.step(torch.tensor([[o]]), s)
        v_final = net.step(torch.tensor([[4.0]]), s)[1]  # V(final obs | 1, 2, 3)
        s = net.step(torch.tensor([[1.0]]), net.initial_state(1))[2]
        v_next = net.step(torch.tensor([[2.0]]), s)[1]  # V(obs after the rollout | the new episode's 1)
    torch.testing.assert_close(r.rewards[2, 0], 1.0 + g * v_final[0])
    torch.testing.assert_close(r.next_value, v_next)


@pytest.mark.parametrize("overrides", [{"context": 4}, {"num_layers": 2, "context": 4}])
def test_refreshing_the_cache_with_unchanged_parameters_changes_nothing(overrides):
    agent = _agent(PPOAttention, **overrides)
    envs, steps = 3, 15
    obs = torch.randn(steps, envs, 3)
    starts = torch.as_tensor(_episode_starts(steps, envs, seed=2))
    state = agent.rollout_state(envs)
    with torch.no_grad():
        for t in range(steps):
            state = agent.reset_state(state, starts[t].numpy())
            _, _, state = agent.net.step(obs[t], state)
    p = agent.history_prefix
    (cache, valid), (cache2, valid2) = state, agent.refresh_state(state, obs[steps - p:], starts[steps - p:])
    assert torch.equal(valid, valid2)
    for (k, v), (k2, v2) in zip(cache, cache2, strict=True):
        m = valid[:, None, :, None].expand_as(k)
        torch.testing.assert_close(k2[m], k[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v2[m], v[m], atol=1e-5, rtol=1e-5)


def test_act_with_attention_puts_lag_zero_first():
    agent = _agent(PPOAttention, context=4)
    rng = np.random.default_rng(0)
    obs = np.ones(3, np.float32)
    action, _, w = agent.act_with_attention(obs, agent.initial_state(), 0.0, rng)
    assert w.shape == (1, 4, 4)
    np.testing.assert_allclose(w[..., 0], 1.0)  # an episode's first step sees only itself, at lag 0
    assert action == agent.act(obs, agent.initial_state(), 0.0, rng)[0]


def test_ppo_loss_normalises_advantages_and_reports_schulmans_kl():
    logits = torch.tensor([[0.2, -0.1], [1.0, 0.0], [0.0, 0.5], [-0.3, 0.3]])
    actions = torch.tensor([0, 0, 1, 1])
    new = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    old = new - torch.tensor([0.5, -0.5, 0.05, 0.0])
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    loss, info = ppo_loss(logits, torch.zeros(4), actions, old, torch.zeros(4), adv, torch.zeros(4), clip_range=0.2,
                          clip_range_vf=0.0, normalize=True, vf_coef=0.0, ent_coef=0.0)
    ratio, a = (new - old).exp(), (adv - adv.mean()) / (adv.std() + 1e-8)
    torch.testing.assert_close(loss, -torch.min(ratio * a, ratio.clamp(0.8, 1.2) * a).mean())
    assert info["approx_kl"] == pytest.approx(((ratio - 1) - (new - old)).mean().item())


def test_schedules_anneal_and_the_loss_uses_the_annealed_clip():
    agent = _agent(PPO)
    agent.set_progress(0.25)
    assert agent.clip_range == pytest.approx(0.05)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)
    obs = torch.randn(6, 3)
    with torch.no_grad():
        logits, values = agent.net(obs)
    batch = dict(obs=obs, actions=torch.zeros(6, dtype=torch.long),
                 log_probs=torch.log_softmax(logits, -1)[:, 0] - 0.1, values=values, advantages=torch.ones(6),
                 returns=values)
    assert agent.loss(batch)[1]["clip_fraction"] == 1.0  # ratio e^0.1: inside 0.2, outside 0.05
    constant = _agent(PPO, lr_schedule="constant", clip_schedule="constant")
    constant.set_progress(0.25)
    assert constant.clip_range == 0.2 and constant.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_minibatches_cover_the_rollout_once_per_epoch():
    agent = _agent(PPO, n_envs=4, n_steps=8, batch_size=8)
    r = Rollout.empty(8, 4, (3,), torch.float32, CPU)
    r.obs = torch.arange(32.0).view(8, 4, 1).expand(8, 4, 3).clone()
    r.advantages = r.returns = torch.zeros(8, 4)
    batches = list(agent.minibatches(r))
    assert [len(b["obs"]) for b in batches] == [8] * 4
    assert sorted(torch.cat([b["obs"][:, 0] for b in batches]).tolist()) == list(range(32))
    lstm = _agent(PPOLSTM, n_envs=8, n_steps=8, batch_size=16)
    r = Rollout.empty(8, 8, (3,), torch.float32, CPU)
    r.obs = torch.arange(8.0).view(1, 8, 1).expand(8, 8, 3).clone()  # every obs of env i is i
    r.advantages = r.returns = torch.zeros(8, 8)
    r.initial_state = (torch.arange(8.0)[:, None].expand(8, 128).clone(), torch.zeros(8, 128))
    orders = set()
    for _ in range(5):
        batches = list(lstm.minibatches(r))
        assert [tuple(b["obs"].shape[:2]) for b in batches] == [(2, 8)] * 4  # batch_size // n_steps envs
        for b in batches:
            assert torch.equal(b["state"][0][:, 0], b["obs"][:, 0, 0])  # each env with its own state
        orders.add(tuple(torch.cat([b["obs"][:, 0, 0] for b in batches]).int().tolist()))
    assert all(sorted(o) == list(range(8)) for o in orders) and len(orders) > 1


def test_update_reports_the_explained_variance_of_the_old_values():
    agent = _agent(PPO, n_envs=2, n_steps=4, batch_size=8, n_epochs=1)
    r = Rollout.empty(4, 2, (3,), torch.float32, CPU)
    r.obs = torch.randn(4, 2, 3)
    r.returns, r.values = torch.arange(8.0).view(4, 2), torch.full((4, 2), 3.5)  # a critic that predicts the mean
    r.advantages = r.returns - r.values
    with torch.no_grad():
        r.log_probs = torch.log_softmax(agent.net(r.obs.flatten(0, 1))[0], -1)[:, 0].view(4, 2)
    assert agent.update(r)["explained_variance"] == pytest.approx(0.0)


def test_metrics_rows_and_the_critic_tracker_on_cut_episodes(tmp_path, monkeypatch):
    calls, original = [], on_policy.CriticTracker.add_episode

    def spy(self, values, rewards, bootstrap):
        calls.append((list(rewards), bootstrap))
        return original(self, values, rewards, bootstrap)

    monkeypatch.setattr(on_policy.CriticTracker, "add_episode", spy)
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=4, batch_size=8, n_epochs=1, lr=0.0)
    LOOPS["on_policy"](_loop_context(agent, _Cut, tmp_path, total_steps=8))
    with torch.no_grad():
        final_value = agent.net(torch.tensor([[3.0]]))[1].item()
    assert [c[0] for c in calls] == [[1.0, 1.0, 1.0]] * 2  # the env's rewards, not the bootstrapped ones
    assert [c[1] for c in calls] == pytest.approx([final_value] * 2, rel=1e-5)
    assert list(RunDir(tmp_path / "run").metrics()["step"]) == [6, 6]  # 2 envs x 3 steps


def test_each_sub_env_episode_has_its_own_seed(tmp_path):
    _Seeds.log = []
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=4, batch_size=8, n_epochs=1)
    LOOPS["on_policy"](_loop_context(agent, _Seeds, tmp_path, total_steps=16))
    expected = [episode_seed(0, k, stream=10 + i) for k in range(3) for i in range(2)]
    assert _Seeds.log == expected and len(set(expected)) == 6
    assert episode_seed(0, 1, stream=10) == 163312383  # pinned: the book's records depend on it


def test_off_policy_and_evaluation_seed_streams(tmp_path):
    _Seeds.log = []
    config = dataclasses.replace(AGENTS["dqn"].preset("gym"), learning_starts=10**6)
    torch.manual_seed(0)
    agent = AGENTS["dqn"]((1,), 2, config, CPU)
    LOOPS["off_policy"](_loop_context(agent, _Seeds, tmp_path, total_steps=9))
    assert _Seeds.log == [episode_seed(0, k) for k in range(4)]
    _Seeds.log = []
    evaluate(RandomPolicy(2), _Seeds(), 2, 1.0, seed=7)
    assert _Seeds.log == [episode_seed(7, k, stream=1) for k in range(2)]


def test_update_rows_at_the_rollout_end_at_or_after_each_1000(tmp_path):
    agent = _agent(PPO, obs_dim=1, n_envs=2, n_steps=8, batch_size=16, n_epochs=1)
    LOOPS["on_policy"](_loop_context(agent, _Cut, tmp_path, total_steps=1008))
    assert list(RunDir(tmp_path / "run").updates()["step"]) == [1008]


def test_harness_evaluates_each_time_with_new_seeds(tmp_path, monkeypatch):
    import companion.train as harness
    from companion.train import build_config, train

    seen, original = [], harness.evaluate
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: (seen.append(k["seed"]), original(*a, **k))[1])
    run, agent = build_config("ppo", "CartPole-v1", seed=3, budget="quick", total_steps=512,
                              overrides={"eval_every": 256, "n_envs": 2, "n_steps": 128, "batch_size": 256,
                                         "n_epochs": 1})
    train(run, agent, tmp_path / "e", show_progress=False)
    assert seen == [3 * 1_000_003 + 256, 3 * 1_000_003 + 512]


def test_lag_bias_starts_from_a_recency_prior():
    agent = _agent(PPOAttention, context=4, num_layers=2)
    expected = -(2.0 ** -torch.arange(4.0))[:, None] * torch.arange(4.0)  # (H, K): head h, lag k: -2^-h * k
    torch.testing.assert_close(agent.net.lag_bias.detach(), expected.expand(2, 4, 4))


def test_every_update_clips_the_gradient_norm(monkeypatch):
    norms, original = [], torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    agent = _agent(PPO, n_envs=2, n_steps=4, batch_size=4, n_epochs=3)
    rollout = Rollout.empty(4, 2, (3,), torch.float32, CPU)
    rollout.obs = torch.randn(4, 2, 3)
    rollout.advantages, rollout.returns = torch.randn(4, 2), torch.randn(4, 2)
    agent.update(rollout)
    assert norms == [0.5] * 6  # 3 epochs x 2 minibatches


def test_lstm_forget_bias_sets_the_forget_gate_only():
    default = _agent(PPOLSTM, lstm_size=8)
    assert not default.net.cell.bias_ih.any() and not default.net.cell.bias_hh.any()  # CleanRL's zeros
    agent = _agent(PPOLSTM, lstm_size=8, forget_bias=1.0)
    bias = agent.net.cell.bias_ih.detach()  # gates (input, forget, cell, output), 8 each
    torch.testing.assert_close(bias[8:16], torch.ones(8))
    assert not bias[:8].any() and not bias[16:].any() and not agent.net.cell.bias_hh.any()
    # The forget gate starts near sigmoid(1) = 0.73: an unchanged input keeps 73% of the cell, not half.
    x, c = torch.zeros(1, agent.net.cell.input_size), torch.ones(1, 8)
    _, c_next = agent.net.cell(x, (torch.zeros(1, 8), c))
    gates = torch.nn.functional.linear(x, agent.net.cell.weight_ih, agent.net.cell.bias_ih)
    assert torch.sigmoid(gates[0, 8:16]).sub(torch.sigmoid(torch.tensor(1.0))).abs().max() < 1e-6
    assert (c_next - torch.sigmoid(torch.tensor(1.0))).abs().max() < 1e-6  # input gate 0.5 x tanh(0) = 0


def test_lstm_forget_bias_takes_the_configured_value():
    agent = _agent(PPOLSTM, lstm_size=8, forget_bias=2.5)
    bias = agent.net.cell.bias_ih.detach()
    torch.testing.assert_close(bias[8:16], torch.full((8,), 2.5))
    assert not bias[:8].any() and not bias[16:].any()


def test_memory_agent_reads_exactly_the_last_m_steps():
    agent = _agent(PPOMemory, memory=6)
    obs, starts = torch.randn(1, 12, 3), torch.zeros(1, 12, dtype=torch.bool)
    starts[0, 0] = True
    changed = obs.clone()
    changed[0, 2] += 5.0  # step 2 is read by steps 3..8 (lags 1..6), not by step 9 and later (lag 7 or more)
    with torch.no_grad():
        logits, values = agent.net.sequence(obs, starts, agent.net.initial_state(1))
        logits2, values2 = agent.net.sequence(changed, starts, agent.net.initial_state(1))
    for t in range(3, 9):
        assert not torch.allclose(values[0, t], values2[0, t]), t
        assert not torch.allclose(logits[0, t], logits2[0, t]), t
    torch.testing.assert_close(values[0, 9:], values2[0, 9:])
    torch.testing.assert_close(values[0, :2], values2[0, :2])


def test_memory_agent_attention_maps_are_indexed_by_lag():
    agent = _agent(PPOMemory, memory=6)
    rng, state = np.random.default_rng(0), agent.initial_state()
    for t in range(8):  # step t has t earlier steps of its episode in memory, at most 6
        _, state, w = agent.act_with_attention(np.full(3, float(t), np.float32), state, 0.0, rng)
        assert w.shape == (1, 4, 7)  # (layers, H, M + 1); index k: the step k back
        held = min(t, 6)
        assert (w[..., 0] == 0).all() and (w[..., held + 1:] == 0).all()  # lag 0 and lags never written
        assert (w[..., 1:held + 1] > 0).all()
        np.testing.assert_allclose(w.sum(-1), 1.0 if held else 0.0, atol=1e-6)


def test_hierarchical_memory_agent_maps_are_indexed_by_lag_and_forget_whole_chunks():
    agent = _agent(PPOHierarchicalMemory, memory=6, chunk_size=2, top_k=3)  # 3 chunks of 2 steps, all read
    rng, state = np.random.default_rng(0), agent.initial_state()
    for t in range(9):
        _, state, w = agent.act_with_attention(np.full(3, float(t), np.float32), state, 0.0, rng)
        assert w.shape == (1, 4, 7)
        oldest = max(0, ((t - 1) // 2 - 2) * 2) if t else 0  # the first step of the oldest chunk still held
        held = t - oldest  # lags 1 .. held are in memory
        assert (w[..., 0] == 0).all() and (w[..., held + 1:] == 0).all()
        assert (w[..., 1:held + 1] > 0).all(), t
        np.testing.assert_allclose(w.sum(-1), 1.0 if held else 0.0, atol=1e-6)
