"""The popular memory-augmented update's fixed points (companion.memory_update), checked against exact values."""

import numpy as np
import pytest

from companion.memory_update import optimal_q, popular_fixed_point, replay_update, stream_transitions
from companion.tabular import TabularMDP, chain_mdp, policy_evaluation, random_mdp

GAMMA = 0.9


def bandit_episode():
    """One state, two actions, each ends the episode with reward 1 (action 1) or 0.5 (action 0)."""
    transitions = np.zeros((2, 2, 2))
    transitions[0, :, 1] = 1.0
    transitions[1, :, 1] = 1.0
    rewards = np.array([[0.5, 1.0], [0.0, 0.0]])
    return TabularMDP(transitions, rewards, np.array([False, True]), np.array([1.0, 0.0]))


def test_optimal_q_satisfies_the_bellman_optimality_equation():
    mdp = random_mdp(7, 3, seed=1)
    q = optimal_q(mdp, GAMMA)
    v = np.where(mdp.terminal, 0.0, q.max(1))
    live = ~mdp.terminal
    np.testing.assert_allclose(q[live], (mdp.rewards + GAMMA * mdp.transitions @ v)[live], atol=1e-10)
    assert (q[mdp.terminal] == 0).all()


def test_max_with_the_terminal_flag_is_q_learning():
    mdp = chain_mdp(6, slip=0.1)
    np.testing.assert_allclose(popular_fixed_point(mdp, GAMMA), optimal_q(mdp, GAMMA), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_next_action_of_the_behaviour_gives_its_values(seed):
    mdp = random_mdp(6, 2, seed=seed)
    mu = np.random.default_rng(seed).dirichlet(np.ones(2), size=6)
    q_mu = popular_fixed_point(mdp, GAMMA, next_action=mu)
    v_mu = policy_evaluation(mdp, mu, GAMMA)
    np.testing.assert_allclose((q_mu * mu).sum(1), v_mu, atol=1e-10)  # V^mu = sum_a mu Q^mu
    assert np.abs(q_mu - optimal_q(mdp, GAMMA)).max() > 0.05  # and not Q*


def test_without_the_terminal_flag_a_one_step_task_is_valued_as_an_endless_one():
    mdp = bandit_episode()
    np.testing.assert_allclose(optimal_q(mdp, GAMMA)[0], [0.5, 1.0])
    # Q(s, a) = r(s, a) + gamma max Q(s, .) with s' the next episode's start: max Q = 1 / (1 - gamma).
    q = popular_fixed_point(mdp, GAMMA, terminal_flag=False)
    np.testing.assert_allclose(q[0], [0.5 + GAMMA / (1 - GAMMA), 1 / (1 - GAMMA)])


def test_replayed_updates_reach_the_fixed_points():
    mdp = chain_mdp(5, slip=0.1)
    mu = np.tile([0.5, 0.5], (5, 1))
    data = stream_transitions(mdp, mu, 300, seed=0)
    cases = [("max", True, optimal_q(mdp, GAMMA)),
             ("stored", True, popular_fixed_point(mdp, GAMMA, next_action=mu)),
             ("max", False, popular_fixed_point(mdp, GAMMA, terminal_flag=False))]
    for next_action, flag, expected in cases:
        q = replay_update(mdp, data, GAMMA, next_action=next_action, terminal_flag=flag, updates=100_000)
        assert np.abs(q - expected)[:-1].max() < 0.06, (next_action, flag)


def test_attention_weights_over_the_buffer_change_nothing():
    mdp = chain_mdp(4)
    data = stream_transitions(mdp, np.tile([0.5, 0.5], (4, 1)), 20, seed=1)
    logits = np.random.default_rng(0).standard_normal(len(data["state"]))
    weights = np.exp(logits) / np.exp(logits).sum()
    plain = replay_update(mdp, data, GAMMA, updates=3_000)
    attended = replay_update(mdp, data, GAMMA, updates=3_000, weights=weights)
    np.testing.assert_allclose(attended, plain, atol=1e-12)


def test_stream_transitions_link_episodes():
    mdp = chain_mdp(3)
    data = stream_transitions(mdp, np.tile([0.0, 1.0], (3, 1)), 3, seed=0)  # always right: 2 steps each
    np.testing.assert_array_equal(data["state"], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(data["next_state"], [1, 2, 1, 2, 1])
    np.testing.assert_array_equal(data["terminated"], [False, True, False, True, False])
    np.testing.assert_array_equal(data["stream_next_state"], [1, 0, 1, 0, 1])


def test_bad_arguments_raise():
    mdp = chain_mdp(3)
    with pytest.raises(ValueError, match="gamma"):
        optimal_q(mdp, 1.0)
    with pytest.raises(ValueError, match="next_action"):
        popular_fixed_point(mdp, GAMMA, next_action="sarsa")
    with pytest.raises(ValueError, match="next_action"):
        replay_update(mdp, stream_transitions(mdp, np.tile([0.5, 0.5], (3, 1)), 2, seed=0), GAMMA,
                      next_action="sarsa")
