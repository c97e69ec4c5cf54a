import time

import numpy as np
import pytest
import torch

from companion.tabular import chain_mdp, policy_evaluation, random_mdp, sample_episodes
from companion.value_mixing import (
    HistoryValueNet,
    discounted_returns,
    fit_history_value,
    history_windows,
    lag_weights,
    mixed_values,
    mixing_curve,
    mixing_error,
    past_value_decomposition,
)

CHAIN = chain_mdp(8, slip=0.1)  # the corridor of the chapter's figure
CHAIN_POLICY = np.tile([0.3, 0.7], (8, 1))  # right with probability 0.7
W0 = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]


def test_lag_weights():
    np.testing.assert_allclose(lag_weights(0.4, 4), [0.4, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(lag_weights(1.0, 3), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="K >= 2"):
        lag_weights(0.5, 1)
    with pytest.raises(ValueError, match="w0"):
        lag_weights(1.5, 3)


def test_mixed_values_by_hand_with_renormalisation_at_the_episode_start():
    values = np.array([10.0, 20.0, 30.0])
    mixed = mixed_values(values, np.array([0, 1, 2]), np.array([0.5, 0.25, 0.25]))
    # t=0: only lag 0 exists; t=1: lags 0 and 1, renormalised over 0.75; t=2: the full window.
    np.testing.assert_allclose(mixed, [10.0, (0.5 * 20 + 0.25 * 10) / 0.75, 0.5 * 30 + 0.25 * 20 + 0.25 * 10])
    # w0 = 0 at t = 0: no past to average, the step keeps its own value (the limit w0 -> 0); at t = 1 only
    # the past state counts.
    np.testing.assert_allclose(mixed_values(values, np.array([2, 0]), lag_weights(0.0, 3)), [30.0, 30.0])
    # The formula is circular: any constant function is a fixed point of it.
    np.testing.assert_allclose(mixed_values(np.full(3, 7.0), np.array([0, 2, 1, 1]), lag_weights(0.2, 3)), 7.0)


def test_mixing_error_is_zero_at_w0_one_and_grows_as_weight_moves_to_the_past():
    for mdp, policy in [(CHAIN, CHAIN_POLICY), (random_mdp(12, 3, seed=0), np.full((12, 3), 1 / 3))]:
        errors = mixing_error(mdp, policy, 0.9, W0, K=4, episodes=300, seed=0)
        assert errors[-1] == 0.0
        assert (errors[:-1] > 0).all() and (np.diff(errors) < 0).all(), errors
    # Measured on the chain (500 episodes, seed 0): 0.1289, 0.0965, 0.0643, 0.0321, 0.0128, 0.


def test_on_full_windows_the_error_is_one_minus_w0_times_the_pure_past_error():
    values = policy_evaluation(CHAIN, CHAIN_POLICY, 0.9)
    states = sample_episodes(CHAIN, CHAIN_POLICY, 1, seed=3)[0][0][:-1]
    assert len(states) > 6
    past_only = mixed_values(values, states, lag_weights(0.0, 4)) - values[states]
    for w0 in (0.3, 0.8):
        error = mixed_values(values, states, lag_weights(w0, 4)) - values[states]
        np.testing.assert_allclose(error[3:], (1 - w0) * past_only[3:], atol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_a_past_value_contains_the_rewards_in_between(k):
    mdp = random_mdp(12, 3, seed=4, n_terminal=2, p_end=0.15)
    policy = np.random.default_rng(1).dirichlet(np.ones(3), size=12)
    d = past_value_decomposition(mdp, policy, 0.9, k)
    assert abs(d.lhs - d.rhs) < 1e-10
    assert d.survival == pytest.approx(0.85**k)  # every step ends the episode with probability 0.15
    if k == 0:
        assert d.rewards_between == 0.0 and d.present_value == d.past_value
    # From a single state too, where the rewards in between are most of the past value (measured: 0.180,
    # 0.202, 0.187 of V = 0.157 for k = 1, 3, 6): leaving them out breaks the identity.
    one = past_value_decomposition(mdp, policy, 0.9, k, start=np.eye(12)[5])
    assert abs(one.lhs - one.rhs) < 1e-10
    assert k == 0 or abs(one.rewards_between) > 0.1


def test_rewards_between_match_monte_carlo_partial_returns():
    mdp, gamma, k = random_mdp(10, 2, seed=7), 0.9, 4
    policy = np.full((10, 2), 0.5)
    d = past_value_decomposition(mdp, policy, gamma, k)
    partial = np.array([np.sum(gamma ** np.arange(min(k, len(r))) * r[:k])
                        for _, _, r in sample_episodes(mdp, policy, 4000, seed=0)])
    assert abs(partial.mean() - d.rewards_between) < 4 * partial.std() / np.sqrt(len(partial))


def test_history_windows():
    windows, valid, prev = history_windows(np.array([4, 5, 6]), 3, actions=np.array([1, 0, 1]))
    np.testing.assert_array_equal(windows, [[0, 0, 4], [0, 4, 5], [4, 5, 6]])
    np.testing.assert_array_equal(valid, [[False, False, True], [False, True, True], [True, True, True]])
    np.testing.assert_array_equal(prev, [[0, 0, 0], [0, 0, 2], [0, 2, 1]])  # a_{j-1} + 1, 0 = none


def test_discounted_returns():
    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5), [1.5, 1.0, 2.0])


def _net(**kwargs):
    torch.manual_seed(0)
    return HistoryValueNet(8, 4, **kwargs).eval()


def test_history_value_net_ignores_steps_before_the_episode_start():
    net = _net(n_actions=2)
    states = torch.tensor([[0, 0, 3, 5], [1, 2, 3, 4]])
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    prev = torch.tensor([[0, 0, 0, 2], [1, 2, 1, 1]])
    with torch.no_grad():
        v, weights = net(states, valid, prev, need_weights=True)
        other_states, other_prev = states.clone(), prev.clone()
        other_states[0, :2], other_prev[0, :2] = torch.tensor([7, 6]), torch.tensor([2, 1])
        v_other, _ = net(other_states, valid, other_prev)
        v_fast, _ = net(states, valid, prev)
        states_seen = states.clone()
        states_seen[1, 0] = 7  # a valid slot: the value may change
        v_seen, _ = net(states_seen, valid, prev)
    assert v.shape == (2,) and weights.shape == (2, 2, 1, 4)
    assert (weights[0, :, :, :2] == 0).all() and torch.allclose(weights.sum(-1), torch.ones(2, 2, 1))
    torch.testing.assert_close(v_other, v, rtol=0, atol=1e-6)
    torch.testing.assert_close(v_fast, v, rtol=0, atol=1e-6)  # fused path = manual path
    assert v_seen[0] == v_fast[0] and abs(v_seen[1] - v_fast[1]) > 1e-6


def test_history_value_net_ignores_the_future_of_the_episode():
    net = _net()
    states = np.array([0, 1, 2, 1, 2, 3, 4])
    changed = states.copy()
    changed[4:] = [6, 0, 6]
    with torch.no_grad():
        v = net(*map(torch.as_tensor, history_windows(states, 4)[:2]))[0]
        v_changed = net(*map(torch.as_tensor, history_windows(changed, 4)[:2]))[0]
    torch.testing.assert_close(v_changed[:4], v[:4], rtol=0, atol=0)
    assert (v_changed[4:] != v[4:]).all()


def test_history_value_net_checks_its_inputs():
    net = _net()
    with pytest.raises(ValueError, match="last slot"):
        net(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[True, True, True, False]]))
    with pytest.raises(ValueError, match=r"\(B, K=4\)"):
        net(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="prev_actions"):
        net(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4).long())


def test_a_learned_history_critic_beats_the_popular_formula():
    start = time.perf_counter()
    fit = fit_history_value(CHAIN, CHAIN_POLICY, 0.9, K=4, episodes=1000, steps=300, seed=0, w0_values=[0.0, 0.5])
    seconds = time.perf_counter() - start
    # Measured (seed 0, torch 2.13 CPU, 1 thread, ~1 s): history critic RMSE 0.0116 against the exact V(s_t);
    # the popular formula with exact values 0.1285 (w0 = 0) and 0.0641 (w0 = 0.5); std of V(s_t) 0.193;
    # the Monte Carlo targets' own RMSE 0.221.
    assert fit.rmse < fit.mixed_rmse[1] / 3
    assert fit.rmse < 0.1 * fit.value_std and fit.rmse < 0.1 * fit.return_rmse
    assert fit.mixed_rmse[0] > fit.mixed_rmse[1] > 0
    assert fit.losses.shape == (300,) and fit.losses[-50:].mean() < fit.losses[:10].mean()
    assert seconds < 15


def test_fit_history_value_is_seeded_and_keeps_torch_global_state():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fit_history_value(CHAIN, CHAIN_POLICY, 0.9, K=3, episodes=30, steps=5, seed=2, use_actions=True)
    assert torch.equal(torch.get_rng_state(), before)
    b = fit_history_value(CHAIN, CHAIN_POLICY, 0.9, K=3, episodes=30, steps=5, seed=2, use_actions=True)
    assert a.rmse == b.rmse and np.array_equal(a.losses, b.losses)
    c = fit_history_value(CHAIN, CHAIN_POLICY, 0.9, K=3, episodes=30, steps=5, seed=3, use_actions=True)
    assert c.rmse != a.rmse


def test_mixing_curve_returns_plain_arrays():
    curve = mixing_curve(CHAIN, CHAIN_POLICY, 0.9, [0.0, 0.5, 1.0], K=3, episodes=30, steps=5, seed=0)
    assert set(curve) == {"w0", "mixing_rmse", "history_rmse", "value_std", "losses"}
    assert all(isinstance(v, np.ndarray) for v in curve.values())
    assert curve["mixing_rmse"].shape == (3,) and curve["mixing_rmse"][-1] == 0.0 and curve["history_rmse"].shape == ()
