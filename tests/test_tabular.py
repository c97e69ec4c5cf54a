import gymnasium as gym
import numpy as np
import pytest

from companion.tabular import TabularMDP, chain_mdp, policy_evaluation, q_learning, random_mdp, sample_episodes


def test_q_learning_solves_deterministic_frozenlake_and_values_follow_bellman():
    env = gym.make("FrozenLake-v1", is_slippery=False)
    result = q_learning(env, 2000, alpha=0.5, gamma=0.9, epsilon=0.2, seed=0)
    state, _ = env.reset(seed=0)
    for _ in range(10):  # the greedy path reaches the goal in 6 moves
        state, reward, terminated, _, _ = env.step(int(result.q[state].argmax()))
        if terminated:
            break
    assert reward == 1.0
    # The greedy value of the start is gamma^5: reward 1 after 6 steps, no discount on the last.
    assert result.q[0].max() == pytest.approx(0.9**5, abs=1e-3)
    assert result.returns.shape == (2000,) and result.returns[-200:].mean() > 0.7


def test_q_learning_rejects_continuous_observations():
    with pytest.raises(ValueError, match="Discrete observations"):
        q_learning(gym.make("CartPole-v1"), 1)


def test_q_learning_is_seeded():
    env = gym.make("FrozenLake-v1")
    a = q_learning(env, 200, seed=3)
    b = q_learning(env, 200, seed=3)
    np.testing.assert_array_equal(a.q, b.q)


# --------------------------------------------------------------------------------------------------
# Exact tools for small MDPs
# --------------------------------------------------------------------------------------------------
def _two_state_mdp():
    """States 0, 1 live, 2 terminal. In 0: action 0 pays 1 and stays or moves to 1 (1/2 each); action 1
    ends the episode with nothing. In 1: either action pays 2 and ends the episode."""
    p = np.zeros((3, 2, 3))
    p[0, 0, 0] = p[0, 0, 1] = 0.5
    p[0, 1, 2] = 1.0
    p[1, :, 2] = 1.0
    p[2, :, 2] = 1.0
    rewards = np.array([[1.0, 0.0], [2.0, 2.0], [0.0, 0.0]])
    return TabularMDP(p, rewards, np.array([False, False, True]), np.array([1.0, 0.0, 0.0]))


def test_policy_evaluation_matches_a_hand_solved_mdp():
    mdp, policy = _two_state_mdp(), np.full((3, 2), 0.5)
    values = policy_evaluation(mdp, policy, 0.9)
    # V1 = 2; V0 = 0.5 * (1 + 0.9 * (V0 + V1) / 2) + 0.5 * 0  =>  V0 = 0.95 / 0.775
    np.testing.assert_allclose(values, [0.95 / 0.775, 2.0, 0.0], rtol=0, atol=1e-12)
    # Always action 0 with gamma = 1: V0 = 1 + (V0 + 2) / 2  =>  V0 = 4.
    np.testing.assert_allclose(policy_evaluation(mdp, np.tile([1.0, 0.0], (3, 1)), 1.0), [4.0, 2.0, 0.0], atol=1e-12)


def test_policy_evaluation_satisfies_the_bellman_equation_on_a_random_mdp():
    mdp = random_mdp(15, 4, seed=1, n_terminal=2)
    policy = np.random.default_rng(0).dirichlet(np.ones(4), size=15)
    values = policy_evaluation(mdp, policy, 0.95)
    backup = (policy * (mdp.rewards + 0.95 * mdp.transitions @ values)).sum(-1)  # (S,)
    live = ~mdp.terminal
    np.testing.assert_allclose(values[live], backup[live], rtol=0, atol=1e-10)
    assert (values[mdp.terminal] == 0).all() and np.abs(values[live]).min() > 0


def test_chain_values_under_always_right_are_powers_of_gamma():
    mdp = chain_mdp(6)
    values = policy_evaluation(mdp, np.tile([0.0, 1.0], (6, 1)), 0.9)
    np.testing.assert_allclose(values, [0.9**4, 0.9**3, 0.9**2, 0.9, 1.0, 0.0], atol=1e-12)
    assert mdp.start[0] == 1.0 and mdp.terminal.tolist() == [False] * 5 + [True]
    # A step cost, always right, gamma = 1: the values count the steps left.
    costly = chain_mdp(4, goal_reward=1.0, step_reward=-0.5)
    np.testing.assert_allclose(policy_evaluation(costly, np.tile([0.0, 1.0], (4, 1)), 1.0), [0.0, 0.5, 1.0, 0.0],
                               atol=1e-12)


def test_policy_evaluation_refuses_episodes_that_never_end_at_gamma_one():
    mdp = chain_mdp(4)
    with pytest.raises(ValueError, match="never end"):
        policy_evaluation(mdp, np.tile([1.0, 0.0], (4, 1)), 1.0)  # always left: stuck at the wall
    with pytest.raises(ValueError, match="gamma"):
        policy_evaluation(mdp, np.tile([0.0, 1.0], (4, 1)), 1.5)


def test_policy_evaluation_matches_monte_carlo_returns():
    mdp, gamma = chain_mdp(6, slip=0.2, step_reward=-0.05, uniform_start=True), 0.9
    policy = np.tile([0.4, 0.6], (6, 1))
    values = policy_evaluation(mdp, policy, gamma)
    episodes = sample_episodes(mdp, policy, 4000, seed=0)
    first = np.array([states[0] for states, _, _ in episodes])
    returns = np.array([np.sum(gamma ** np.arange(len(r)) * r) for _, _, r in episodes])  # G_0 of each episode
    for s in range(5):  # first-visit returns from s_0 = s are unbiased samples of V(s)
        g = returns[first == s]
        assert len(g) > 600
        assert abs(g.mean() - values[s]) < 4 * g.std() / np.sqrt(len(g)), s


def test_sample_episodes_shapes_rewards_and_seeding():
    mdp = random_mdp(8, 3, seed=2)
    policy = np.full((8, 3), 1 / 3)
    episodes = sample_episodes(mdp, policy, 50, seed=5)
    assert len(episodes) == 50
    for states, actions, rewards in episodes:
        assert states.shape == (len(actions) + 1,) and rewards.shape == actions.shape
        assert mdp.terminal[states[-1]] and not mdp.terminal[states[:-1]].any()
        np.testing.assert_array_equal(rewards, mdp.rewards[states[:-1], actions])
        assert (mdp.transitions[states[:-1], actions, states[1:]] > 0).all()  # only possible moves
    again = sample_episodes(mdp, policy, 50, seed=5)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(episodes, again, strict=True))
    lengths = [len(a) for _, a, _ in episodes]
    assert 4 < np.mean(lengths) < 20  # p_end = 0.1: about 10 steps
    cut = sample_episodes(mdp, policy, 20, seed=5, max_steps=3)
    assert max(len(a) for _, a, _ in cut) == 3


def test_random_mdp_is_a_valid_seeded_episodic_mdp():
    mdp = random_mdp(10, 2, seed=0, n_terminal=2, branching=2, p_end=0.25)
    np.testing.assert_allclose(mdp.transitions.sum(-1), 1.0)
    assert mdp.terminal.tolist() == [False] * 8 + [True] * 2
    np.testing.assert_allclose(mdp.transitions[:8, :, 8:].sum(-1), 0.25)
    assert ((mdp.transitions[:8, :, :8] > 0).sum(-1) == 2).all()
    np.testing.assert_array_equal(random_mdp(10, 2, seed=0, n_terminal=2, branching=2, p_end=0.25).rewards,
                                  mdp.rewards)
    assert not np.array_equal(random_mdp(10, 2, seed=1).rewards, random_mdp(10, 2, seed=0).rewards)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(transitions=m["transitions"][:, :, :2]), "transitions must be"),
    (lambda m: m.update(rewards=m["rewards"][:2]), "rewards must be"),
    (lambda m: m.update(start=np.ones(3)), "start must be a distribution"),
    (lambda m: m.update(start=np.array([0.5, 0.0, 0.5])), "no mass on terminal"),
    (lambda m: m.update(transitions=m["transitions"] * 0.9), "sum to 1"),
    (lambda m: m.update(rewards=m["rewards"] + 1.0), "zero reward"),
])
def test_tabular_mdp_rejects_inconsistent_arrays(change, match):
    mdp = _two_state_mdp()
    fields = {"transitions": mdp.transitions, "rewards": mdp.rewards, "terminal": mdp.terminal, "start": mdp.start}
    change(fields)
    with pytest.raises(ValueError, match=match):
        TabularMDP(**fields)


def test_policies_are_checked():
    mdp = _two_state_mdp()
    with pytest.raises(ValueError, match="sum to 1"):
        policy_evaluation(mdp, np.full((3, 2), 0.4), 0.9)
    with pytest.raises(ValueError, match=r"\(S, A\)"):
        sample_episodes(mdp, np.full((2, 2), 0.5), 1, seed=0)
