"""Why a critic must not average its own past values, and what to learn instead (book chapter 3).

**The popular formula.** A recurring proposal for an "attention critic" writes the value of the
current step as an attention-weighted average of the critic's values at past states::

    V(s_t) = sum_{k=0}^{K-1} alpha_k V(s_{t-k}),    alpha = softmax_k(f(s_t, s_{t-k}))

**Why it is wrong.** A value is an expected *future* return, ``V(s) = E[r_t + gamma r_{t+1} + ... | s_t = s]``
(Sutton & Barto 2018, section 3.5), and the Bellman equation ties ``V(s_t)`` to the next state's value,
``V(s_t) = E[r_t + gamma V(s_{t+1})]``, never to a past one. Unrolled ``k`` times from ``s_{t-k}``::

    V(s_{t-k}) = E[r_{t-k} + gamma r_{t-k+1} + ... + gamma^{k-1} r_{t-1}] + gamma^k E[V(s_t)]

(:func:`past_value_decomposition` checks this numerically). So a past value already contains the rewards
between ``t-k`` and ``t``, which are behind the agent and belong to no return from ``t`` on, and it
discounts the future by ``gamma^k`` too many. Averaging past values into ``V(s_t)`` adds those rewards
in and scales the future down: the estimate is biased even when every ``V(s_{t-k})`` is exact
(:func:`mixing_error` measures by how much). And the definition is circular: ``V`` is defined through
``V`` at other states with no reward or return to anchor it; any constant function satisfies it.

**The correct construction.** Attention (Vaswani et al. 2017) belongs in the *input* of the critic, not
in a mix of its outputs: attend over the history ``h_t = (s_{t-K+1}, ..., s_t)`` to build a representation,
and learn ``V(h_t) = E[G_t | h_t]`` from returns (or TD targets) like any other critic. Under partial
observability this history critic is the right object: Baisero & Amato 2022 ("Unbiased asymmetric
reinforcement learning under partial observability") show that critics of the state alone can bias
the policy gradient, while critics of the history do not. In an MDP the Markov property gives
``V(h_t) = V(s_t)``, so :func:`fit_history_value` can measure a learned history critic against exact
values (:func:`companion.tabular.policy_evaluation`), next to the popular formula's error on the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from companion.attention import LearnedPositionalEmbedding, MultiHeadAttention
from companion.tabular import TabularMDP, policy_evaluation, sample_episodes

__all__ = [
    "HistoryFit",
    "HistoryValueNet",
    "PastValueDecomposition",
    "discounted_returns",
    "fit_history_value",
    "history_windows",
    "lag_weights",
    "mixed_values",
    "mixing_curve",
    "mixing_error",
    "past_value_decomposition",
]

Episode = tuple[np.ndarray, np.ndarray, np.ndarray]  # states (T+1,), actions (T,), rewards (T,)


# --------------------------------------------------------------------------------------------------
# The popular formula, and its error with exact values plugged in
# --------------------------------------------------------------------------------------------------
def lag_weights(w0: float, K: int) -> np.ndarray:
    """Attention weights ``(K,)`` over lags: ``w0`` on lag 0 (the current state), ``(1 - w0) / (K - 1)`` on each
    of the ``K - 1`` past lags. ``w0 = 1`` is the plain critic ``V(s_t)``; ``w0 = 0`` uses the past only."""
    if K < 2 or not 0.0 <= w0 <= 1.0:
        raise ValueError(f"lag_weights: need K >= 2 and 0 <= w0 <= 1; got K={K}, w0={w0}")
    weights = np.full(K, (1.0 - w0) / (K - 1))
    weights[0] = w0
    return weights


def mixed_values(values: np.ndarray, states: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The popular formula along one trajectory: ``V_hat_t = sum_{k=0}^{K-1} alpha_k V(s_{t-k})``.

    Near the episode start, lags that fall before ``s_0`` are dropped and the weights renormalised over
    the lags that exist, as a softmax over the existing keys would do (a masked softmax). Where every
    existing lag has weight 0 (``w0 = 0`` at ``t = 0``, with :func:`lag_weights`), the step keeps its own value
    ``V(s_t)``: there is no past to average, and it is the limit of the renormalised formula as ``w0 -> 0``.

    Args:
        values: ``(S,)`` a value per state, e.g. the exact ``V`` of :func:`~companion.tabular.policy_evaluation`.
        states: ``(T,)`` int, the states ``s_0 .. s_{T-1}`` of one episode.
        weights: ``(K,)`` non-negative weights ``alpha_k`` of lag ``k`` (index 0 = the current step);
            they are normalised over the existing lags, so their sum does not matter.

    Returns:
        ``V_hat`` ``(T,)``.
    """
    values, states, weights = np.asarray(values, dtype=np.float64), np.asarray(states), np.asarray(weights, float)
    if values.ndim != 1 or states.ndim != 1 or weights.ndim != 1 or weights.size < 1:
        raise ValueError(f"mixed_values: values (S,), states (T,) and weights (K,) must be 1-D; got shapes "
                         f"{values.shape}, {states.shape}, {weights.shape}")
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"mixed_values: weights must be finite and non-negative, got {weights}")
    source = np.arange(len(states))[:, None] - np.arange(len(weights))[None, :]  # (T, K): the step t - k
    w = np.where(source >= 0, weights[None, :], 0.0)  # (T, K), lags before s_0 dropped
    total = w.sum(-1)  # (T,)
    past = values[states[np.maximum(source, 0)]]  # (T, K): V(s_{t-k})
    mixed = (w * past).sum(-1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, mixed, values[states])


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _mixing_rmse(values: np.ndarray, episodes: list[Episode], w0_values: Sequence[float], K: int) -> np.ndarray:
    """RMSE ``(n_w0,)`` of the popular formula against ``values[s_t]`` over the steps ``t < T`` of ``episodes``."""
    exact = np.concatenate([values[states[:-1]] for states, _, _ in episodes])  # (N,)
    errors = []
    for w0 in w0_values:
        weights = lag_weights(float(w0), K)
        mixed = np.concatenate([mixed_values(values, states[:-1], weights) for states, _, _ in episodes])
        errors.append(_rmse(mixed, exact))
    return np.array(errors)


def mixing_error(mdp: TabularMDP, policy: np.ndarray, gamma: float, w0_values: Sequence[float], *, K: int = 4,
                 episodes: int = 500, seed: int = 0) -> np.ndarray:
    """How wrong the popular formula is when every value in it is exact.

    Samples ``episodes`` episodes of ``policy``, and at every visited step ``t < T`` (the states where an
    action was taken) compares ``V_hat_t`` (:func:`mixed_values` with :func:`lag_weights` ``(w0, K)`` and
    the exact ``V``) with the exact ``V(s_t)``.

    Args:
        mdp, policy, gamma: as for :func:`~companion.tabular.policy_evaluation`.
        w0_values: the weights on the current state to try.
        K: the window, lags ``0 .. K-1``.
        episodes: number of sampled episodes (the same ones for every ``w0``).
        seed: seeds the episodes.

    Returns:
        RMSE ``(len(w0_values),)``: 0 at ``w0 = 1``; each step's error shrinks as ``w0`` grows (for full
        windows it is ``(1 - w0)`` times the error at ``w0 = 0``), so the RMSE falls monotonically to 0.
    """
    values = policy_evaluation(mdp, policy, gamma)
    return _mixing_rmse(values, sample_episodes(mdp, policy, episodes, seed=seed), w0_values, K)


@dataclass
class PastValueDecomposition:
    """The two sides of ``E[V(s_{t-k})] = E[sum_{i<k} gamma^i r_{t-k+i}] + gamma^k E[V(s_t)]``, exactly.

    Expectations over ``s_{t-k} ~ start``; after an episode ends, rewards and values are 0 (the
    expectations are restricted to paths still running), so the identity holds whether or not an
    episode ends in between.
    """

    past_value: float  # E[V(s_{t-k})], from the solved V (the left side)
    rewards_between: float  # E[sum_{i<k} gamma^i r_{t-k+i}], from matrix powers
    present_value: float  # gamma^k E[V(s_t); episode still running at t], from matrix powers
    survival: float  # P(episode still running at t)

    @property
    def lhs(self) -> float:
        return self.past_value

    @property
    def rhs(self) -> float:
        return self.rewards_between + self.present_value


def past_value_decomposition(mdp: TabularMDP, policy: np.ndarray, gamma: float, k: int,
                             start: np.ndarray | None = None) -> PastValueDecomposition:
    """Split a past value into the rewards between ``t - k`` and ``t`` and the discounted present value.

    With ``Q`` the transitions among non-terminal states under ``policy`` and ``d`` the distribution
    of ``s_{t-k}`` (restricted to non-terminal states), ``d Q^i`` is the sub-probability of being at
    each state ``i`` steps later with the episode still running, so::

        rewards_between = sum_{i<k} gamma^i d Q^i r_pi,    present_value = gamma^k d Q^k V

    The left side, ``d V``, comes from the linear solve of :func:`~companion.tabular.policy_evaluation`,
    the right side from matrix powers, so the two agree only if ``V`` satisfies the Bellman equation.

    Args:
        mdp, policy, gamma: as for :func:`~companion.tabular.policy_evaluation`.
        k: the lag, ``>= 0``.
        start: ``(S,)`` the distribution of ``s_{t-k}``; default ``mdp.start``.
    """
    if k < 0:
        raise ValueError(f"past_value_decomposition: k must be >= 0, got {k}")
    d = mdp.start if start is None else np.asarray(start, dtype=np.float64)
    if d.shape != (mdp.n_states,):
        raise ValueError(f"past_value_decomposition: start must be (S,) = ({mdp.n_states},), got shape {d.shape}")
    values = policy_evaluation(mdp, policy, gamma)
    p_pi, r_pi = mdp.under_policy(policy)
    live = ~mdp.terminal
    q = p_pi[np.ix_(live, live)]  # (N, N)
    occupancy = d[live]  # (N,): d Q^i, running over i
    rewards_between = 0.0
    for i in range(k):
        rewards_between += gamma**i * occupancy @ r_pi[live]
        occupancy = occupancy @ q
    return PastValueDecomposition(past_value=float(d @ values), rewards_between=float(rewards_between),
                                  present_value=float(gamma**k * occupancy @ values[live]),
                                  survival=float(occupancy.sum()))


# --------------------------------------------------------------------------------------------------
# The correct construction: a learned critic of the history
# --------------------------------------------------------------------------------------------------
def history_windows(states: np.ndarray, K: int, actions: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The last ``K`` steps of the episode at each step ``t``, oldest first, the current step last.

    Args:
        states: ``(T,)`` int, ``s_0 .. s_{T-1}``.
        K: window length.
        actions: optional ``(>= T-1,)`` int, the actions ``a_0 ..``; the window then also holds each step's
            *previous* action ``a_{j-1}``, coded as ``a_{j-1} + 1``, with 0 for "none" at ``j = 0``.

    Returns:
        ``(windows (T, K), valid (T, K), prev_actions (T, K) or None)``: ``windows[t, K-1-k] = s_{t-k}``;
        ``valid`` is True where ``t - k >= 0``; slots before the episode start hold 0 and are not valid.
    """
    states = np.asarray(states)
    if states.ndim != 1 or K < 1:
        raise ValueError(f"history_windows: need states (T,) and K >= 1; got shape {states.shape}, K={K}")
    source = np.arange(len(states))[:, None] - (K - 1) + np.arange(K)[None, :]  # (T, K): step in each slot
    valid = source >= 0
    windows = np.where(valid, states[np.maximum(source, 0)], 0)
    prev_actions = None
    if actions is not None:
        coded = np.concatenate([[0], np.asarray(actions)[: len(states) - 1] + 1])  # (T,): a_{j-1} + 1
        prev_actions = np.where(valid, coded[np.maximum(source, 0)], 0)
    return windows, valid, prev_actions


class HistoryValueNet(nn.Module):
    """``V(h_t)`` from the last ``K`` states of the episode, read by attention from the current step.

    Each step of the window becomes a token: an embedding of its one-hot state (``nn.Embedding`` is a
    linear map of the one-hot vector), plus, if ``n_actions`` is given, one of the previous action, plus a
    learned embedding of its slot. The current step's token is the query of a
    :class:`~companion.attention.MultiHeadAttention`; the whole window gives keys and values, with a
    boolean mask (True = may attend) that hides the slots before the episode start. The current step is
    always visible, so no query is left with nothing to attend to. The attended vector is added to the
    current token (a residual connection) and a small MLP maps it to ``V(h_t)``.

    Args:
        n_states: ``S``, the number of states.
        K: window length.
        n_actions: if given, also embed the previous action (``A + 1`` codes, see :func:`history_windows`).
        d_model: token width ``E``.
        num_heads: attention heads ``H``.
        hidden: width of the MLP's hidden layer.
    """

    def __init__(self, n_states: int, K: int, *, n_actions: int | None = None, d_model: int = 32,
                 num_heads: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.n_states, self.K = n_states, K
        self.state_embed = nn.Embedding(n_states, d_model)
        self.action_embed = None if n_actions is None else nn.Embedding(n_actions + 1, d_model)
        self.positions = LearnedPositionalEmbedding(K, d_model)
        self.attention = MultiHeadAttention(d_model, num_heads)
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, states: Tensor, valid: Tensor, prev_actions: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Values of the windows.

        Args:
            states: ``(B, K)`` long, the window's states, oldest first, the current one last.
            valid: ``(B, K)`` bool, True at the steps of the current episode; ``valid[:, -1]`` must be True.
            prev_actions: ``(B, K)`` long codes of the previous actions; needed iff ``n_actions`` was given.
            need_weights: also return the attention weights.

        Returns:
            ``(values (B,), weights (B, H, 1, K) or None)``.
        """
        if states.dim() != 2 or states.shape[1] != self.K or valid.shape != states.shape:
            raise ValueError(f"HistoryValueNet: states and valid must be (B, K={self.K}); got shapes "
                             f"{tuple(states.shape)} and {tuple(valid.shape)}")
        if not bool(valid[:, -1].all()):
            raise ValueError("HistoryValueNet: the current step (last slot) must be valid in every window")
        if (prev_actions is None) != (self.action_embed is None):
            raise ValueError("HistoryValueNet: pass prev_actions exactly when the net was built with n_actions")
        tokens = self.state_embed(states)  # (B, K, E)
        if self.action_embed is not None:
            tokens = tokens + self.action_embed(prev_actions)
        tokens = self.positions(tokens)  # (B, K, E)
        current = tokens[:, -1:]  # (B, 1, E)
        mask = valid[:, None, None, :]  # (B, 1, 1, K), broadcasts to (B, H, 1, K)
        attended, weights = self.attention(current, tokens, tokens, mask=mask, need_weights=need_weights)
        return self.head(current + attended)[:, 0, 0], weights  # (B,), (B, H, 1, K) or None


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Returns-to-go ``G_t = sum_{i >= t} gamma^(i-t) r_i`` ``(T,)`` of one episode's rewards ``(T,)``."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def _window_arrays(episodes: list[Episode], K: int, use_actions: bool) -> tuple[np.ndarray, ...]:
    """Windows ``(N, K)``, valid ``(N, K)``, previous actions ``(N, K)`` (or empty) and ``s_t`` ``(N,)`` of
    every step ``t < T`` of ``episodes``."""
    parts = [history_windows(states[:-1], K, actions if use_actions else None) for states, actions, _ in episodes]
    windows = np.concatenate([w for w, _, _ in parts])
    valid = np.concatenate([v for _, v, _ in parts])
    prev_actions = np.concatenate([a for _, _, a in parts]) if use_actions else np.zeros((0, K), dtype=np.int64)
    current = np.concatenate([states[:-1] for states, _, _ in episodes])
    return windows, valid, prev_actions, current


@dataclass
class HistoryFit:
    """What :func:`fit_history_value` measured, on fresh episodes unless said otherwise."""

    net: HistoryValueNet
    rmse: float  # learned V(h_t) against the exact V(s_t)
    w0: np.ndarray  # (n_w0,) the weights on the current state tried for the popular formula
    mixed_rmse: np.ndarray  # (n_w0,) the popular formula (exact values plugged in) against V(s_t), same steps
    value_std: float  # standard deviation of V(s_t) over the same steps: the spread to compare errors with
    return_rmse: float  # the training targets G_t against V(s_t): the noise the critic averages out
    losses: np.ndarray  # (steps,) training loss per Adam step


def fit_history_value(mdp: TabularMDP, policy: np.ndarray, gamma: float, *, K: int = 4, episodes: int = 1000,
                      steps: int = 300, seed: int = 0, w0_values: Sequence[float] = (0.5,),
                      eval_episodes: int | None = None, use_actions: bool = False, batch_size: int = 256,
                      lr: float = 3e-3, d_model: int = 32, max_steps: int = 1_000) -> HistoryFit:
    """Train a :class:`HistoryValueNet` on Monte Carlo returns and measure it against exact values.

    The critic never sees the exact values: it regresses the returns-to-go ``G_t`` of ``episodes`` sampled
    episodes (mean squared error, ``steps`` Adam steps on minibatches of ``batch_size`` steps, the learning rate
    decaying linearly from ``lr`` to 0, which averages out much of the targets' noise). It is then
    evaluated on ``eval_episodes`` fresh episodes, at every step ``t < T``, against the exact ``V(s_t)``
    (in an MDP, ``V(h_t) = V(s_t)``), next to the popular formula with exact values plugged in.
    Episodes cut at ``max_steps`` have truncated returns; keep it well above the typical length.

    Args:
        mdp, policy, gamma: as for :func:`~companion.tabular.policy_evaluation`.
        K: the history window.
        episodes: training episodes.
        steps: Adam steps.
        seed: seeds the episodes, the network's initial weights and the minibatches (on CPU, the same seed
            gives the same result); torch's global generator is left as it was.
        w0_values: weights on the current state for the popular formula's comparison.
        eval_episodes: fresh episodes for evaluation (default: ``episodes``).
        use_actions: also feed the previous actions to the critic.
        batch_size, lr, d_model: training and network settings.
        max_steps: the most steps per sampled episode.
    """
    train_seed, eval_seed, torch_seed = (int(x) for x in np.random.SeedSequence(seed).generate_state(3))
    values = policy_evaluation(mdp, policy, gamma)
    train = sample_episodes(mdp, policy, episodes, seed=train_seed, max_steps=max_steps)
    test = sample_episodes(mdp, policy, episodes if eval_episodes is None else eval_episodes, seed=eval_seed,
                           max_steps=max_steps)
    windows, valid, prev_actions, current = _window_arrays(train, K, use_actions)
    returns = np.concatenate([discounted_returns(rewards, gamma) for _, _, rewards in train])  # (N,)
    if len(returns) == 0:
        raise ValueError("fit_history_value: the training episodes have no steps")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        net = HistoryValueNet(mdp.n_states, K, n_actions=mdp.n_actions if use_actions else None, d_model=d_model)
        generator = torch.Generator().manual_seed(torch_seed)
    x, m, a = torch.as_tensor(windows), torch.as_tensor(valid), torch.as_tensor(prev_actions)
    y = torch.as_tensor(returns, dtype=torch.float32)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    losses = np.zeros(steps)
    net.train()
    for step in range(steps):
        idx = torch.randint(len(y), (batch_size,), generator=generator)
        predicted, _ = net(x[idx], m[idx], a[idx] if use_actions else None)
        loss = torch.mean((predicted - y[idx]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses[step] = loss.item()

    net.eval()
    windows, valid, prev_actions, current = _window_arrays(test, K, use_actions)
    with torch.no_grad():
        predicted, _ = net(torch.as_tensor(windows), torch.as_tensor(valid),
                           torch.as_tensor(prev_actions) if use_actions else None)
    exact = values[current]  # (N,)
    train_exact = np.concatenate([values[states[:-1]] for states, _, _ in train])
    return HistoryFit(net=net, rmse=_rmse(predicted.double().numpy(), exact), w0=np.asarray(w0_values, float),
                      mixed_rmse=_mixing_rmse(values, test, w0_values, K), value_std=float(exact.std()),
                      return_rmse=_rmse(returns, train_exact), losses=losses)


def mixing_curve(mdp: TabularMDP, policy: np.ndarray, gamma: float, w0_values: Sequence[float], *, K: int = 4,
                 episodes: int = 1000, steps: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Everything one figure needs: the popular formula's error against ``w0``, and a learned history critic's
    error (a horizontal line), on the same fresh episodes (see :func:`fit_history_value`).

    Returns:
        A dict of numpy arrays: ``w0`` ``(n,)``, ``mixing_rmse`` ``(n,)``, ``history_rmse`` ``()``,
        ``value_std`` ``()`` (the spread of ``V(s_t)``, for scale) and ``losses`` ``(steps,)``.
    """
    fit = fit_history_value(mdp, policy, gamma, K=K, episodes=episodes, steps=steps, seed=seed, w0_values=w0_values)
    return {"w0": fit.w0, "mixing_rmse": fit.mixed_rmse, "history_rmse": np.array(fit.rmse),
            "value_std": np.array(fit.value_std), "losses": fit.losses}
