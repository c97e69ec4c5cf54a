"""The cue-recall corridor of chapter 4 (companion.memory_tasks): dynamics, seeding, ids, returns."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from companion.envs import EpisodeReplay, env_family, make_env, make_vec_env
from companion.memory_tasks import CUE_RECALL_DELAYS, CueRecallEnv, cue_recall_id, register_memory_tasks


def run_episode(env, policy, seed=None):
    """Play one episode; ``policy(obs, t)`` gives the action. Returns (observations, rewards, terminated flags)."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, terms = [obs], [], []
    done = False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy(obs, len(rewards)))
        observations.append(obs)
        rewards.append(reward)
        terms.append(terminated)
        assert not truncated
        done = terminated
    return observations, rewards, terms


class Oracle:
    """Remembers the cue it saw at step 0 and chooses it at the decision: the optimal policy."""

    def __init__(self, n_cues):
        self.n_cues, self.cue = n_cues, None

    def __call__(self, obs, t):
        if t == 0:
            self.cue = int(np.argmax(obs[: self.n_cues]))
        return self.cue if obs[self.n_cues + 1] == 1.0 else 0


# --- dynamics by hand ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0, 1, 5])
def test_cue_only_at_step_0_then_corridor_then_decision(delay):
    env = CueRecallEnv(delay=delay, n_cues=3)
    observations, rewards, terms = run_episode(env, lambda obs, t: 0, seed=1)
    assert len(rewards) == delay + 2  # the cue step, the corridor, the decision
    assert terms == [False] * (delay + 1) + [True]
    first = observations[0]
    assert first.dtype == np.float32 and first.shape == (3 + 2,)
    np.testing.assert_array_equal(first[:3], np.eye(3, dtype=np.float32)[env.cue])
    assert first[3] == 0 and first[4] == 0  # neither corridor nor decision
    for obs in observations[1 : delay + 1]:
        np.testing.assert_array_equal(obs, [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(observations[delay + 1], [0, 0, 0, 0, 1])  # the decision
    np.testing.assert_array_equal(observations[-1], np.zeros(5))  # after the decision
    for obs in observations:
        assert env.observation_space.contains(obs)


@pytest.mark.parametrize("n_cues", [2, 4])
def test_reward_is_one_only_for_the_cue_at_the_decision(n_cues):
    env = CueRecallEnv(delay=3, n_cues=n_cues, wrong_reward=-0.5)
    for cue in range(n_cues):
        for choice in range(n_cues):
            for seed in range(50):  # find a seed whose cue is ``cue``
                env.reset(seed=seed)
                if env.cue == cue:
                    break
            _, rewards, _ = run_episode(env, lambda obs, t, choice=choice: choice, seed=seed)
            assert rewards[:-1] == [0.0] * 4
            assert rewards[-1] == (1.0 if choice == cue else -0.5)


def test_actions_before_the_decision_change_nothing():
    env = CueRecallEnv(delay=6, n_cues=4, noise=0.5, noise_dims=2, step_reward=-0.01)
    rng = np.random.default_rng(0)
    reference = None
    for _ in range(5):  # random actions before the decision, the same one at the decision
        plan = list(rng.integers(4, size=7)) + [2]
        observations, rewards, _ = run_episode(env, lambda obs, t, plan=plan: plan[t], seed=9)
        if reference is None:
            reference = (observations, rewards)
        for a, b in zip(observations, reference[0], strict=True):
            np.testing.assert_array_equal(a, b)
        assert rewards == reference[1]
        assert rewards[:-1] == [-0.01] * 7


def test_step_reward_and_wrong_reward_set_the_returns():
    env = CueRecallEnv(delay=9, wrong_reward=0.0, step_reward=-0.1)
    _, rewards, _ = run_episode(env, Oracle(2), seed=0)
    assert sum(rewards) == pytest.approx(1.0 - 0.1 * 10)
    env.reset(seed=0)
    wrong = 1 - env.cue
    _, rewards, _ = run_episode(env, lambda obs, t: wrong, seed=0)
    assert rewards[-1] == 0.0


def test_step_outside_an_episode_and_bad_actions_raise():
    env = CueRecallEnv(delay=0)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(2)
    env.step(np.int64(1))
    env.step(0)  # the decision
    with pytest.raises(RuntimeError, match="after the decision"):
        env.step(0)


@pytest.mark.parametrize(
    "kwargs",
    [dict(delay=-1), dict(delay=2.5), dict(n_cues=1), dict(noise=-1.0, noise_dims=2), dict(noise=1.0),
     dict(noise_dims=-1), dict(render_mode="human")],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        CueRecallEnv(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(delay=0), dict(delay=3, n_cues=4, noise=1.0, noise_dims=3, wrong_reward=0.0)]
)
def test_passes_gymnasiums_env_checker(kwargs):
    check_env(CueRecallEnv(**kwargs), skip_render_check=True)


# --- noise and seeding -----------------------------------------------------------------------------


def test_noise_dims_are_gaussian_with_the_given_std_and_carry_no_cue():
    env = CueRecallEnv(delay=200, n_cues=2, noise=2.0, noise_dims=3)
    assert env.observation_space.shape == (2 + 2 + 3,)
    observations, _, _ = run_episode(env, lambda obs, t: 0, seed=4)
    noise = np.stack(observations)[:, 4:]
    assert noise.dtype == np.float32
    assert abs(noise.mean()) < 0.2  # 603 draws: the mean's standard error is 2 / sqrt(603) = 0.08
    assert noise.std() == pytest.approx(2.0, rel=0.1)
    assert len({tuple(row) for row in noise}) == len(noise)  # fresh at every step
    quiet = CueRecallEnv(delay=3, noise=0.0, noise_dims=3)
    observations, _, _ = run_episode(quiet, lambda obs, t: 0, seed=4)
    assert np.all(np.stack(observations)[:, 4:] == 0)


def test_noise_is_drawn_in_every_observation_the_cue_and_the_last_included():
    env = CueRecallEnv(delay=2, n_cues=2, noise=1.0, noise_dims=3)
    observations, _, _ = run_episode(env, lambda obs, t: 0, seed=4)
    noise = np.stack(observations)[:, 4:]  # o_0 (the cue), o_1, o_2 (corridor), o_3 (decision), after it
    assert np.all(noise != 0)
    np.testing.assert_array_equal(observations[0][:2], np.eye(2, dtype=np.float32)[env.cue])  # the cue as it was
    first = [env.reset(seed=seed)[0][4:] for seed in (0, 1)]
    assert not np.array_equal(first[0], first[1])  # o_0's noise comes from the seed too


def test_reset_seed_makes_the_episode_reproducible():
    def episode(seed):
        env = CueRecallEnv(delay=5, n_cues=5, noise=1.0, noise_dims=4)
        return run_episode(env, lambda obs, t: t % 5, seed=seed)

    first, second = episode(123), episode(123)
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1]
    other = episode(124)
    assert not np.array_equal(np.stack(first[0]), np.stack(other[0]))
    # Unseeded resets go on with the seeded stream: same cues after the same seed.
    env_a, env_b = CueRecallEnv(n_cues=5), CueRecallEnv(n_cues=5)
    env_a.reset(seed=7)
    env_b.reset(seed=7)
    cues_a = [env_a.reset()[0][:5].argmax() for _ in range(20)]
    cues_b = [env_b.reset()[0][:5].argmax() for _ in range(20)]
    assert cues_a == cues_b and len(set(cues_a)) > 1


def test_cues_are_about_uniform_over_seeds():
    n_cues, n = 4, 4000
    env = CueRecallEnv(delay=0, n_cues=n_cues)
    counts = np.bincount([int(env.reset(seed=seed)[0][:n_cues].argmax()) for seed in range(n)], minlength=n_cues)
    expected = n / n_cues
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, counts  # the 0.999 quantile of chi-square with 3 degrees of freedom


# --- ids, make_env and the harness -----------------------------------------------------------------


def test_registered_ids_and_make_env():
    register_memory_tasks()  # idempotent
    assert "CueRecall-v0" in gym.registry
    for delay in CUE_RECALL_DELAYS:
        env_id = cue_recall_id(delay)
        assert env_id == f"CueRecall-D{delay}-v0" and env_id in gym.registry
        assert env_family(env_id) == "gym"
    assert make_env("CueRecall-v0").unwrapped.delay == 16
    env = make_env("CueRecall-v0", delay=64, n_cues=3, noise=0.5, noise_dims=2)
    assert (env.unwrapped.delay, env.unwrapped.n_cues, env.observation_space.shape) == (64, 3, (7,))
    env = make_env("CueRecall-D32-v0", seed=0)
    assert env.unwrapped.delay == 32 and env.action_space.n == 2
    _, rewards, _ = run_episode(env, Oracle(2), seed=1)
    assert len(rewards) == 34 and sum(rewards) == 1.0
    with pytest.raises(ValueError, match="CueRecall-v0"):
        cue_recall_id(5)


def test_course_wrappers_apply_to_it():
    env = make_env("CueRecall-D4-v0", frame_stack=3, prev_action=True, prev_reward=True)
    assert env.observation_space.shape == (3 * (4 + 2 + 1),)
    vec = make_vec_env("CueRecall-D4-v0", 3, seed=0)
    for _ in range(20):  # several episodes with same-step autoreset
        obs, rewards, terminated, truncated, _ = vec.step(np.zeros(3, dtype=np.int64))
        assert obs.shape == (3, 4) and not truncated.any()
    replay = EpisodeReplay(make_env("CueRecall-D4-v0"), index=0)
    obs, _ = replay.reset(seed=5, options={"replay": {0: [1, 0, 1]}})
    np.testing.assert_array_equal(obs, [0, 0, 1, 0])  # the third corridor step


@pytest.mark.parametrize("algo", ["dqn", "drqn", "sadqn", "ppo", "ppo-lstm", "ppo-attn"])
def test_every_agent_has_a_preset(algo):
    from companion.agents import AGENTS
    from companion.train import build_config

    run, agent_config = build_config(algo, "CueRecall-D16-v0", budget="quick")
    assert run.total_steps > 0
    env = make_env("CueRecall-D16-v0")
    agent = AGENTS[algo](env.observation_space.shape, int(env.action_space.n), agent_config, torch.device("cpu"))
    obs, _ = env.reset(seed=0)
    action, _ = agent.act(obs, agent.initial_state(), 0.0, np.random.default_rng(0))
    assert 0 <= action < 2


@pytest.mark.parametrize("algo", ["drqn", "ppo-attn"])
def test_a_short_training_run(algo, tmp_path):
    from companion.train import build_config, train

    run, agent_config = build_config(algo, "CueRecall-D4-v0", budget="quick", total_steps=300,
                                     overrides={"eval_episodes": 2})
    result = train(run, agent_config, tmp_path / algo, show_progress=False)
    assert result.steps >= 300 and result.episodes >= 300 // 6 - 1
    assert result.final_eval in (-1.0, 0.0, 1.0)


# --- returns -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_cues", "wrong_reward"), [(2, -1.0), (2, 0.0), (4, -1.0), (4, 0.0)])
def test_random_policy_scores_chance(n_cues, wrong_reward):
    from companion.train import random_return

    expected = (1 + (n_cues - 1) * wrong_reward) / n_cues
    std = (1 - wrong_reward) * np.sqrt((1 / n_cues) * (1 - 1 / n_cues))  # of one episode's return
    episodes = 4000
    mean = random_return("CueRecall-v0", episodes=episodes, seed=0, delay=3, n_cues=n_cues,
                         wrong_reward=wrong_reward)
    assert abs(mean - expected) < 4 * std / np.sqrt(episodes)  # 4 standard errors (0.016 to 0.032)


@pytest.mark.parametrize("delay", CUE_RECALL_DELAYS)
def test_oracle_that_remembers_the_cue_scores_one_at_every_delay(delay):
    env = make_env(cue_recall_id(delay))
    for seed in range(6):
        _, rewards, _ = run_episode(env, Oracle(2), seed=seed)
        assert sum(rewards) == 1.0


def test_a_memoryless_policy_scores_chance():
    env = CueRecallEnv(delay=2)
    returns = [sum(run_episode(env, lambda obs, t: 0, seed=seed)[1]) for seed in range(2000)]
    assert abs(np.mean(returns)) < 4 / np.sqrt(2000)

