"""The popular "memory-augmented DQN" update, taken at its word and solved exactly (book chapter 4).

In circulation, as the update of a DQN that "attends over its replay memory"::

    Q(s_t, a_t) <- Q(s_t, a_t) + alpha [ r_t + gamma sum_{i=1}^{N} w_i Q(s_{t+1}, a') - Q(s_t, a_t) ]

with ``w_i`` attention weights over the ``N`` entries of the replay buffer. Read literally, it has four defects:

1. **The sum is vacuous.** Its terms do not depend on ``i``; with weights that sum to 1 (a softmax) it is
   ``Q(s_{t+1}, a')``, whatever the attention computed, and it costs ``O(N)`` per update for nothing.
2. **There is no max.** ``a'`` is not bound. Read as the next action the agent took, the update is SARSA
   (Rummery & Niranjan 1994): it learns the values ``Q^mu`` of the behaviour policy ``mu`` that filled the
   buffer (exploration included), not ``Q*``.
3. **There is no terminal flag.** The target bootstraps past the end of an episode. Where the buffer is read
   as a stream of observations, the "next state" of an episode's last step is the next episode's first, and
   the update values an endless chain of episodes.
4. ``N`` is the buffer size, so the weights of the sum would change with every write.

The Bellman optimality target (Watkins 1989; DQN, Mnih et al. 2015) needs none of this::

    y_t = r_t + gamma (1 - d_t) max_a' Q(s_{t+1}, a')

and a memory-based value that is a real weighted sum, NEC's (Pritzel et al. 2017), weights *different*
stored values ``v_i`` by the similarity of their keys: ``Q(s, a) = sum_i w_i v_i`` (:mod:`companion.agents.nec`).

Here the update's fixed point is computed exactly on a small :class:`~companion.tabular.TabularMDP`. A
tabular update with a fixed target rule converges (under the usual step sizes, every pair updated often) to
the ``Q`` that its expected target reproduces, ``Q = r + gamma P~ (mu Q)``, a linear system over the
(state, action) pairs: :func:`popular_fixed_point` solves it, for each reading of ``a'`` and with or without
the terminal flag. :func:`optimal_q` is ``Q*`` by value iteration. :func:`replay_update` runs the update
itself on sampled transitions, to show that the linear system is what the update learns.
"""

from __future__ import annotations

import numpy as np

from companion.tabular import TabularMDP, sample_episodes

__all__ = ["optimal_q", "popular_fixed_point", "replay_update", "stream_transitions"]


def optimal_q(mdp: TabularMDP, gamma: float, *, tol: float = 1e-12, max_iter: int = 100_000) -> np.ndarray:
    """``Q*`` ``(S, A)`` by value iteration, ``Q = r + gamma P max_a' Q`` with ``Q = 0`` at terminal states."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"optimal_q: gamma must lie in [0, 1), got {gamma}")
    q = np.zeros((mdp.n_states, mdp.n_actions))
    for _ in range(max_iter):
        v = np.where(mdp.terminal, 0.0, q.max(1))  # (S,)
        new = mdp.rewards + gamma * mdp.transitions @ v  # (S, A)
        new[mdp.terminal] = 0.0
        if np.abs(new - q).max() < tol:
            return new
        q = new
    raise RuntimeError("optimal_q: value iteration did not converge")


def _next_state_matrix(mdp: TabularMDP, terminal_flag: bool) -> np.ndarray:
    """``P~`` ``(S, A, S)``: where the target bootstraps from. With the flag, terminal states bootstrap nothing
    (their column is dropped); without it, the stream reading: the mass of a move into a terminal state goes to
    the next episode's first state, drawn from ``mdp.start``."""
    p = mdp.transitions.copy()
    into_terminal = p[:, :, mdp.terminal].sum(-1)  # (S, A)
    p[:, :, mdp.terminal] = 0.0
    if not terminal_flag:
        p += into_terminal[:, :, None] * mdp.start[None, None, :]
    return p


def popular_fixed_point(mdp: TabularMDP, gamma: float, *, next_action: str | np.ndarray = "max",
                        terminal_flag: bool = True) -> np.ndarray:
    """The ``Q`` ``(S, A)`` that the update ``Q(s, a) <- Q + alpha [r + gamma Q(s', a') - Q]`` converges to.

    (The popular formula's weighted sum over the buffer is ``Q(s', a')`` itself: defect 1.)

    Args:
        mdp: the MDP.
        gamma: discount in ``[0, 1)``.
        next_action: how ``a'`` is read: ``"max"`` (Q-learning's ``max_a'``), or an ``(S, A)`` policy ``mu``
            whose next action is taken (SARSA: the behaviour's values ``Q^mu``).
        terminal_flag: ``False`` bootstraps past episode ends, as a stream of observations reads them.

    Returns:
        ``Q`` on the non-terminal states; terminal rows are 0 (no update starts there).
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"popular_fixed_point: gamma must lie in [0, 1), got {gamma}")
    p = _next_state_matrix(mdp, terminal_flag)
    live = ~mdp.terminal
    if isinstance(next_action, str):
        if next_action != "max":
            raise ValueError(f"next_action must be 'max' or an (S, A) policy, got {next_action!r}")
        q = np.zeros((mdp.n_states, mdp.n_actions))
        for _ in range(100_000):  # a contraction: value iteration with P~
            new = np.where(live[:, None], mdp.rewards + gamma * p @ q.max(1), 0.0)
            if np.abs(new - q).max() < 1e-12:
                return new
            q = new
        raise RuntimeError("popular_fixed_point: value iteration did not converge")
    mu = mdp.check_policy(next_action)
    # Q(s, a) = r(s, a) + gamma sum_s' P~(s'|s, a) sum_a' mu(a'|s') Q(s', a'): linear in the (S*A) unknowns.
    n_states, n_actions = mdp.n_states, mdp.n_actions
    operator = gamma * np.einsum("sat,tb->satb", p, mu).reshape(n_states * n_actions, n_states * n_actions)
    pairs = np.repeat(live, n_actions)  # the (s, a) rows that an update ever starts from
    q = np.zeros(n_states * n_actions)
    system = np.eye(int(pairs.sum())) - operator[np.ix_(pairs, pairs)]
    q[pairs] = np.linalg.solve(system, mdp.rewards.reshape(-1)[pairs])
    return q.reshape(n_states, n_actions)


def stream_transitions(mdp: TabularMDP, behaviour: np.ndarray, episodes: int, *, seed: int,
                       max_steps: int = 1_000) -> dict[str, np.ndarray]:
    """Episodes of ``behaviour`` laid end to end, as a replay buffer filled by one env holds them.

    Returns arrays ``(n,)``: ``state``, ``action``, ``reward``, ``next_state`` (the state the step led to, a
    terminal one at an episode's end), ``terminated``, ``stream_next_state`` and ``stream_next_action`` (the
    next *stored* step's state and action: after an episode's last step, the next episode's first), for the
    ``n`` steps that have a next stored step.
    """
    rows: dict[str, list] = {k: [] for k in ("state", "action", "reward", "next_state", "terminated")}
    for states, actions, rewards in sample_episodes(mdp, behaviour, episodes, seed=seed, max_steps=max_steps):
        for t in range(len(actions)):
            rows["state"].append(states[t])
            rows["action"].append(actions[t])
            rows["reward"].append(rewards[t])
            rows["next_state"].append(states[t + 1])
            rows["terminated"].append(bool(mdp.terminal[states[t + 1]]))
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["stream_next_state"] = np.append(out["state"][1:], -1)
    out["stream_next_action"] = np.append(out["action"][1:], -1)
    keep = slice(0, len(out["state"]) - 1)  # the last step has no next stored step
    return {k: v[keep] for k, v in out.items()}


def replay_update(mdp: TabularMDP, data: dict[str, np.ndarray], gamma: float, *, next_action: str = "max",
                  terminal_flag: bool = True, updates: int = 200_000, alpha: float = 0.05, seed: int = 0,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Run the update on transitions replayed uniformly from ``data`` (:func:`stream_transitions`); returns ``Q``.

    ``next_action="max"`` bootstraps from ``max_a' Q(s', a')``; ``"stored"`` from the next stored step's action
    (SARSA on the behaviour's data). ``terminal_flag=False`` bootstraps from the next *stored* state, across
    episode ends. ``weights`` ``(N,)``, if given, are the popular formula's attention weights over the ``N``
    stored entries, and the target is ``r + gamma sum_i w_i Q(s', a')`` computed as written: an ``O(N)`` sum
    whose terms do not depend on ``i``. The step size decays as ``alpha / (1 + visits / 1000)`` per pair.
    """
    if next_action not in ("max", "stored"):
        raise ValueError(f"next_action must be 'max' or 'stored', got {next_action!r}")
    rng = np.random.default_rng(seed)
    q = np.zeros((mdp.n_states, mdp.n_actions))
    visits = np.zeros_like(q)
    n = len(data["state"])
    for i in rng.integers(0, n, size=updates):
        s, a, r = data["state"][i], data["action"][i], data["reward"][i]
        if terminal_flag:
            s_next, ended = data["next_state"][i], data["terminated"][i]
            a_next = data["stream_next_action"][i]  # the episode's next action (unused where it ended)
        else:
            s_next, ended, a_next = data["stream_next_state"][i], False, data["stream_next_action"][i]
        bootstrap = 0.0 if ended else (q[s_next].max() if next_action == "max" else q[s_next, a_next])
        if weights is not None:
            bootstrap = float(np.sum(weights * bootstrap))  # sum_i w_i Q(s', a'): the same term N times
        visits[s, a] += 1
        q[s, a] += alpha / (1.0 + visits[s, a] / 1_000) * (r + gamma * bootstrap - q[s, a])
    return q
