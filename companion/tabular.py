"""Tabular Q-learning (Watkins 1989), the warm-up of book chapter 2.

With a small discrete state space, Q can be a table ``Q[s, a]``. After each transition
``(s, a, r, s')`` it moves towards the one-step target::

    Q[s, a] <- Q[s, a] + alpha * (r + gamma * max_a' Q[s', a'] - Q[s, a])

with ``max_a' Q[s', a']`` replaced by 0 when ``s'`` is terminal. DQN replaces the table by a network
and the single update by a gradient step on a batch from replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

__all__ = ["TabularResult", "q_learning"]


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
