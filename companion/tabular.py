"""Tabular reinforcement learning: Q-learning (book chapter 2) and exact tools for small MDPs (chapter 3).

**Tabular Q-learning** (Watkins 1989), the warm-up of book chapter 2. With a small discrete state space,
Q can be a table ``Q[s, a]``. After each transition ``(s, a, r, s')`` it moves towards the one-step target::

    Q[s, a] <- Q[s, a] + alpha * (r + gamma * max_a' Q[s', a'] - Q[s, a])

with ``max_a' Q[s', a']`` replaced by 0 when ``s'`` is terminal. DQN replaces the table by a network
and the single update by a gradient step on a batch from replay.

**Exact values of small finite MDPs.** Chapter 3 checks claims about critics against values computed
exactly, not estimated. A :class:`TabularMDP` holds ``S`` states and ``A`` actions as arrays:

- ``transitions`` ``(S, A, S)``: ``P[s, a, s']``, the probability of moving to ``s'``;
- ``rewards`` ``(S, A)``: ``r(s, a)``, the expected reward of taking ``a`` in ``s``;
- ``terminal`` ``(S,)``: True for absorbing states that end the episode (self-loop, zero reward);
- ``start`` ``(S,)``: the distribution of the first state (no mass on terminal states).

A policy is an ``(S, A)`` array of action probabilities. :func:`policy_evaluation` solves the Bellman
equation ``V = r_pi + gamma P_pi V`` (Sutton & Barto 2018, section 4.1) as a linear system over the
non-terminal states, with ``V = 0`` on terminal ones; :func:`sample_episodes` draws episodes to compare
estimates with. :func:`random_mdp` and :func:`chain_mdp` build MDPs to try things on.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

__all__ = [
    "TabularMDP",
    "TabularResult",
    "chain_mdp",
    "policy_evaluation",
    "q_learning",
    "random_mdp",
    "sample_episodes",
]


@dataclass
class TabularResult:
    q: np.ndarray  # (n_states, n_actions)
    returns: np.ndarray  # (episodes,) return of each training episode


def q_learning(env: gym.Env, episodes: int, *, alpha: float = 0.1, gamma: float = 0.99, epsilon: float = 0.1,
               seed: int = 0) -> TabularResult:
    """Epsilon-greedy tabular Q-learning on an env with Discrete observations and actions.

    Ties between equal Q-values are broken at random, so an all-zero table explores.
    """
    if not isinstance(env.observation_space, gym.spaces.Discrete) or not isinstance(env.action_space,
                                                                                     gym.spaces.Discrete):
        raise ValueError(f"tabular Q-learning needs Discrete observations and actions; got "
                         f"{env.observation_space} and {env.action_space}")
    rng = np.random.default_rng(seed)
    q = np.zeros((env.observation_space.n, env.action_space.n))
    returns = np.zeros(episodes)
    for episode in range(episodes):
        state, _ = env.reset(seed=int(rng.integers(2**31)))
        done = False
        while not done:
            if rng.random() < epsilon:
                action = int(rng.integers(env.action_space.n))
            else:
                best = np.flatnonzero(q[state] == q[state].max())
                action = int(rng.choice(best))
            next_state, reward, terminated, truncated, _ = env.step(action)
            target = reward + (0.0 if terminated else gamma * q[next_state].max())
            q[state, action] += alpha * (target - q[state, action])
            returns[episode] += reward
            state, done = next_state, terminated or truncated
    return TabularResult(q, returns)


# --------------------------------------------------------------------------------------------------
# Exact tools for small finite MDPs
# --------------------------------------------------------------------------------------------------
_ATOL = 1e-8  # tolerance on probabilities that must sum to 1


@dataclass
class TabularMDP:
    """A finite MDP with episodes that end in absorbing terminal states.

    Rewards are expected rewards ``r(s, a)``: :func:`sample_episodes` emits them as they are, so an
    episode's randomness comes from the policy and the transitions only. Values depend on rewards only
    through their expectations, so nothing exact changes.

    Args:
        transitions: ``(S, A, S)``, ``transitions[s, a, s']`` = P(s' | s, a); every ``[s, a]`` row sums to 1.
        rewards: ``(S, A)`` expected rewards; 0 at terminal states.
        terminal: ``(S,)`` bool; a terminal state moves to itself under every action.
        start: ``(S,)`` distribution of the first state, with no mass on terminal states.
    """

    transitions: np.ndarray  # (S, A, S)
    rewards: np.ndarray  # (S, A)
    terminal: np.ndarray  # (S,) bool
    start: np.ndarray  # (S,)

    def __post_init__(self) -> None:
        self.transitions = np.asarray(self.transitions, dtype=np.float64)
        self.rewards = np.asarray(self.rewards, dtype=np.float64)
        self.terminal = np.asarray(self.terminal, dtype=bool)
        self.start = np.asarray(self.start, dtype=np.float64)
        p, r, term, start = self.transitions, self.rewards, self.terminal, self.start
        if p.ndim != 3 or p.shape[0] != p.shape[2] or p.shape[0] < 1 or p.shape[1] < 1:
            raise ValueError(f"TabularMDP: transitions must be (S, A, S) with S, A >= 1, got shape {p.shape}")
        n_states, n_actions = p.shape[:2]
        if r.shape != (n_states, n_actions):
            raise ValueError(f"TabularMDP: rewards must be (S, A) = {(n_states, n_actions)}, got shape {r.shape}")
        if term.shape != (n_states,) or start.shape != (n_states,):
            raise ValueError(f"TabularMDP: terminal and start must be (S,) = ({n_states},), got shapes "
                             f"{term.shape} and {start.shape}")
        if not (np.isfinite(p).all() and np.isfinite(r).all() and np.isfinite(start).all()):
            raise ValueError("TabularMDP: transitions, rewards and start must be finite")
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=_ATOL):
            raise ValueError("TabularMDP: every transitions[s, a] row must be non-negative and sum to 1")
        if (start < 0).any() or not np.isclose(start.sum(), 1.0, atol=_ATOL) or start[term].any():
            raise ValueError("TabularMDP: start must be a distribution (sum 1) with no mass on terminal states")
        if not np.allclose(p[term, :, term.nonzero()[0]], 1.0) or r[term].any():
            raise ValueError("TabularMDP: terminal states must be absorbing (self-loop) with zero reward")

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def n_actions(self) -> int:
        return self.transitions.shape[1]

    def check_policy(self, policy: np.ndarray) -> np.ndarray:
        """``policy`` as a float ``(S, A)`` array, after checking that each row is a distribution."""
        policy = np.asarray(policy, dtype=np.float64)
        if policy.shape != (self.n_states, self.n_actions):
            raise ValueError(f"policy must be (S, A) = {(self.n_states, self.n_actions)}, got shape {policy.shape}")
        if (policy < 0).any() or not np.allclose(policy.sum(-1), 1.0, atol=_ATOL):
            raise ValueError("policy: every row policy[s] must be non-negative and sum to 1")
        return policy

    def under_policy(self, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Markov chain of states under ``policy``: ``P_pi`` ``(S, S)`` and ``r_pi`` ``(S,)``."""
        policy = self.check_policy(policy)
        p_pi = np.einsum("sa,sat->st", policy, self.transitions)  # (S, S)
        r_pi = (policy * self.rewards).sum(-1)  # (S,)
        return p_pi, r_pi


def random_mdp(n_states: int, n_actions: int, *, seed: int, n_terminal: int = 1, branching: int = 3,
               p_end: float = 0.1, reward_scale: float = 1.0) -> TabularMDP:
    """A random episodic MDP: the last ``n_terminal`` states are terminal, the others are not.

    From each non-terminal ``(s, a)`` the episode ends with probability ``p_end`` (spread uniformly over
    the terminal states; the mean episode length is ``1 / p_end`` steps), and otherwise moves to one of
    ``branching`` non-terminal states drawn at random, with Dirichlet(1) probabilities. Rewards are
    ``Normal(0, reward_scale)``; the first state is uniform over the non-terminal states.

    Args:
        n_states: ``S``, terminal states included.
        n_actions: ``A``.
        seed: seeds a ``numpy.random.Generator``; the same seed gives the same MDP.
        n_terminal: how many of the ``S`` states are terminal (at least 1, fewer than ``S``).
        branching: non-terminal successors of each ``(s, a)`` (capped at ``S - n_terminal``).
        p_end: probability in ``(0, 1]`` that a step ends the episode.
        reward_scale: standard deviation of the rewards.
    """
    if n_actions < 1 or not 1 <= n_terminal < n_states:
        raise ValueError(f"random_mdp: need n_actions >= 1 and 1 <= n_terminal < n_states; got n_states="
                         f"{n_states}, n_actions={n_actions}, n_terminal={n_terminal}")
    if not 0.0 < p_end <= 1.0 or branching < 1:
        raise ValueError(f"random_mdp: need 0 < p_end <= 1 and branching >= 1; got {p_end}, {branching}")
    rng = np.random.default_rng(seed)
    n_live = n_states - n_terminal
    branching = min(branching, n_live)
    transitions = np.zeros((n_states, n_actions, n_states))
    for s in range(n_live):
        for a in range(n_actions):
            successors = rng.choice(n_live, size=branching, replace=False)
            transitions[s, a, successors] = (1.0 - p_end) * rng.dirichlet(np.ones(branching))
            transitions[s, a, n_live:] = p_end / n_terminal
    transitions[n_live:, :, n_live:] = np.eye(n_terminal)[:, None, :]  # terminal states are absorbing
    rewards = np.zeros((n_states, n_actions))
    rewards[:n_live] = reward_scale * rng.standard_normal((n_live, n_actions))
    terminal = np.arange(n_states) >= n_live
    start = np.where(terminal, 0.0, 1.0 / n_live)
    return TabularMDP(transitions, rewards, terminal, start)


def chain_mdp(n_states: int, *, slip: float = 0.0, goal_reward: float = 1.0, step_reward: float = 0.0,
              uniform_start: bool = False) -> TabularMDP:
    """A corridor of ``n_states`` cells; the episode ends on reaching the rightmost one, the goal.

    ::

        [0] - [1] - ... - [n-2] - [GOAL n-1]
        start                      terminal

    Action 0 moves left (cell 0 has a wall on its left: moving left there stays put), action 1 moves
    right. With probability ``slip`` the move goes the other way. A move that enters the goal pays
    ``goal_reward``, every other move ``step_reward``; ``rewards[s, a]`` is the expected reward.

    Under "always right", ``V(s) = goal_reward * gamma^(n - 2 - s)`` (with ``step_reward = 0``): the
    value grows towards the goal, so a state's value differs from its neighbours' in a way one can
    read off a plot. ``policy = np.tile([1 - p, p], (n_states, 1))`` goes right with probability ``p``.

    Args:
        n_states: cells, the goal included (at least 2).
        slip: probability in ``[0, 1)`` that a move goes the opposite way.
        goal_reward: reward of a move into the goal.
        step_reward: reward of every other move (e.g. ``-0.1`` for a cost per step).
        uniform_start: start uniformly in a non-goal cell instead of in cell 0.
    """
    if n_states < 2 or not 0.0 <= slip < 1.0:
        raise ValueError(f"chain_mdp: need n_states >= 2 and 0 <= slip < 1; got {n_states}, {slip}")
    goal = n_states - 1
    transitions = np.zeros((n_states, 2, n_states))
    for s in range(goal):
        left, right = max(s - 1, 0), s + 1
        transitions[s, 0, left] += 1.0 - slip
        transitions[s, 0, right] += slip
        transitions[s, 1, right] += 1.0 - slip
        transitions[s, 1, left] += slip
    transitions[goal, :, goal] = 1.0
    rewards = step_reward + transitions[:, :, goal] * (goal_reward - step_reward)  # (S, A)
    rewards[goal] = 0.0
    terminal = np.arange(n_states) == goal
    start = np.where(terminal, 0.0, 1.0 / goal) if uniform_start else np.eye(n_states)[0]
    return TabularMDP(transitions, rewards, terminal, start)


def policy_evaluation(mdp: TabularMDP, policy: np.ndarray, gamma: float) -> np.ndarray:
    """The exact state values ``V^pi`` ``(S,)``, from the Bellman equation as a linear system.

    On the non-terminal states ``N``, ``V_N = r_N + gamma P_NN V_N`` (the terminal states' values are 0,
    so transitions into them drop out); hence ``(I - gamma P_NN) V_N = r_N``. This has one solution when
    ``gamma < 1``, or when ``gamma = 1`` and the policy ends every episode with probability 1.

    Args:
        mdp: the MDP.
        policy: ``(S, A)`` action probabilities.
        gamma: discount in ``[0, 1]``.

    Returns:
        ``V`` ``(S,)``: ``V[s] = E[sum_t gamma^t r_t | s_0 = s]``, 0 at terminal states.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"policy_evaluation: gamma must lie in [0, 1], got {gamma}")
    p_pi, r_pi = mdp.under_policy(policy)
    live = ~mdp.terminal
    p_live = gamma * p_pi[np.ix_(live, live)]  # (N, N)
    if p_live.size and np.abs(np.linalg.eigvals(p_live)).max() >= 1.0 - 1e-12:
        raise ValueError("policy_evaluation: values are infinite: with gamma = 1 some episodes never end")
    values = np.zeros(mdp.n_states)
    values[live] = np.linalg.solve(np.eye(int(live.sum())) - p_live, r_pi[live])
    return values


def sample_episodes(mdp: TabularMDP, policy: np.ndarray, n: int, *, seed: int,
                    max_steps: int = 1_000) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Draw ``n`` episodes of ``policy`` in ``mdp``.

    An episode stops when it enters a terminal state or after ``max_steps`` steps (then its last state
    is not terminal, and its returns are cut short).

    Args:
        mdp: the MDP.
        policy: ``(S, A)`` action probabilities.
        n: number of episodes.
        seed: seeds a ``numpy.random.Generator``; the same seed gives the same episodes.
        max_steps: the most steps an episode may take.

    Returns:
        A list of ``n`` tuples ``(states (T+1,), actions (T,), rewards (T,))``: ``states[t]`` is ``s_t``,
        from ``s_0`` to the final state ``s_T``; ``rewards[t] = r(s_t, a_t)``. ``T`` varies by episode.
    """
    policy = mdp.check_policy(policy)
    if n < 0 or max_steps < 0:
        raise ValueError(f"sample_episodes: n and max_steps must be >= 0, got {n} and {max_steps}")
    rng = np.random.default_rng(seed)
    # Inverse-CDF sampling: u * total < total, so searchsorted never lands on a zero-probability entry.
    start_cdf = np.cumsum(mdp.start)  # (S,)
    policy_cdf = np.cumsum(policy, axis=-1)  # (S, A)
    transition_cdf = np.cumsum(mdp.transitions, axis=-1)  # (S, A, S)
    episodes = []
    for _ in range(n):
        state = int(np.searchsorted(start_cdf, rng.random() * start_cdf[-1], side="right"))
        states, actions, rewards = [state], [], []
        while not mdp.terminal[state] and len(actions) < max_steps:
            cdf = policy_cdf[state]
            action = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            cdf = transition_cdf[state, action]
            next_state = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            actions.append(action)
            rewards.append(mdp.rewards[state, action])
            states.append(next_state)
            state = next_state
        episodes.append((np.array(states, dtype=np.int64), np.array(actions, dtype=np.int64),
                         np.array(rewards, dtype=np.float64)))
    return episodes
