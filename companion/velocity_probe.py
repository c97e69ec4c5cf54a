"""Can a sequence network compute CartPole's hidden velocities from positions? A supervised probe (book
chapter 7.3).

SA-DQN failed to learn CartPole with the velocities hidden; chapter 7 asks whether its network *could*
compute them. Windows of ``K + 1`` steps come from random-policy CartPole episodes; the network sees the
cart position and pole angle (the velocities zeroed, as the task hides them) and is trained by regression
to output both velocities at every position from the second on. Scored by ``R^2`` on held-out windows.

Why ``R^2`` stays below 1 without the previous action: CartPole integrates with an explicit Euler step,
``x_{t+1} = x_t + tau * xdot_t`` and ``xdot_{t+1} = xdot_t + tau * xddot(s_t, a_t)``, so positions up to
``t + 1`` pin down ``xdot_t`` but ``xdot_{t+1}`` also depends on the push ``a_t``, which a position-only
input does not show, at *every* position of the window, not only the first ones. With the previous action
one-hot in the input (``with_action=True``) the velocity is determined from the second position on. That is
why recurrent agents should see the previous action (:class:`~companion.envs.PreviousActionReward`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from companion.agents import DRQN, SADQN
from companion.agents.drqn import RecurrentQNetwork
from companion.agents.sadqn import HistoryQNetwork
from companion.envs import make_env

__all__ = ["cartpole_windows", "fit_velocity_probe", "probe_networks"]


def cartpole_windows(n_steps: int, window: int = 17, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Windows of true CartPole states under a uniformly random policy, and the action before each state.

    Returns:
        ``states`` ``(N, window, 4)`` and ``previous_actions`` ``(N, window)`` (``-1`` at an episode's first
        step), from episodes totalling at least ``n_steps`` steps.
    """
    env, rng = make_env("CartPole-v1"), np.random.default_rng(seed)
    states_out, actions_out, total = [], [], 0
    while total < n_steps:
        states = [env.reset(seed=int(rng.integers(2**31)))[0]]
        previous = [-1]
        done = False
        while not done:
            action = int(rng.integers(2))
            state, _, terminated, truncated, _ = env.step(action)
            states.append(state)
            previous.append(action)
            done = terminated or truncated
        states_arr, previous_arr = np.array(states, dtype=np.float32), np.array(previous)
        total += len(states_arr)
        for i in range(len(states_arr) - window + 1):
            states_out.append(states_arr[i:i + window])
            actions_out.append(previous_arr[i:i + window])
    env.close()
    return torch.tensor(np.stack(states_out)), torch.tensor(np.stack(actions_out))


def probe_networks(with_action: bool, window: int = 17, seed: int = 0) -> dict[str, nn.Module]:
    """The two networks the chapter probes, with their CartPole presets and two outputs: SA-DQN's
    transformer (positions for the whole window) and DRQN's LSTM, for inputs of 4 (or 6, with the previous
    action) features."""
    width = 6 if with_action else 4
    sadqn = dataclasses.replace(SADQN.preset("gym"), seq_len=window)
    drqn = DRQN.preset("gym")
    torch.manual_seed(seed)
    return {"SA-DQN transformer": HistoryQNetwork((width,), 2, sadqn),
            "DRQN LSTM": RecurrentQNetwork((width,), 2, drqn.hidden, drqn.lstm_size)}


def probe_inputs(states: Tensor, previous_actions: Tensor, with_action: bool) -> Tensor:
    """What the network sees: ``(N, T, 4)`` states with both velocities zeroed, and with ``with_action`` the
    previous action one-hot appended, ``(N, T, 6)`` (zeros where there is none)."""
    observed = states.clone()
    observed[..., [1, 3]] = 0.0
    if not with_action:
        return observed
    onehot = nn.functional.one_hot(previous_actions.clamp(min=0), 2).float() * (previous_actions >= 0)[..., None]
    return torch.cat([observed, onehot], dim=-1)


def fit_velocity_probe(net: nn.Module, states: Tensor, previous_actions: Tensor, steps: int,
                       with_action: bool = False, lr: float = 1e-3, batch_size: int = 32,
                       seed: int = 0) -> np.ndarray:
    """Fit ``net`` (inputs ``(B, T, 4 or 6)`` -> outputs ``(B, T, >= 2)``, e.g. a Q-network with two actions)
    to the two hidden velocities at positions ``1 .. T-1`` by Adam; returns ``R^2`` of the cart's and the
    pole's velocity on the held-out tenth of the windows, ``(2,)``."""
    torch.manual_seed(seed)
    inputs = probe_inputs(states, previous_actions, with_action)
    velocities = states[..., [1, 3]]  # (N, T, 2)
    order = torch.randperm(len(states))
    cut = len(order) * 9 // 10
    train_idx, test_idx = order[:cut], order[cut:]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        batch = train_idx[torch.randint(len(train_idx), (batch_size,))]
        predicted = _outputs(net, inputs[batch])
        loss = (predicted[:, 1:] - velocities[batch, 1:]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = _outputs(net, inputs[test_idx])
    target = velocities[test_idx, 1:]
    error = (predicted[:, 1:] - target).pow(2).mean(dim=(0, 1))
    return (1 - error / target.var(dim=(0, 1))).numpy()


def _outputs(net: nn.Module, inputs: Tensor) -> Tensor:
    out = net(inputs)
    out = out[0] if isinstance(out, tuple) else out
    return out[..., :2]
