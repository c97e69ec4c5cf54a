"""DQN (Mnih et al. 2015) and Double DQN (van Hasselt et al. 2016), book chapter 2.

Implementation details, CleanRL-style:

1. The Q-network is an encoder from :mod:`companion.networks` and a linear head, one output per action.
2. Targets come from a **target network**, a copy of the online network refreshed every
   ``target_update`` env steps; with ``double_dqn`` the online network picks the next action and the
   target network values it.
3. A ``terminated`` transition does not bootstrap; a ``truncated`` one (time limit) does.
4. Huber loss (the TD error's gradient is clipped at 1), gradients clipped by norm, Adam.
5. Rewards may be clipped in the update only (Atari); the recorded returns are the game's.
6. Epsilon-greedy exploration, linear from ``eps_start`` to ``eps_end``; acting skips the forward
   pass when it explores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from companion.agents.base import QAgent, QLearningConfig, replay_loss, td_loss
from companion.buffers import TransitionBatch
from companion.networks import make_encoder

__all__ = ["DQN", "DQNConfig", "QNetwork"]


@dataclasses.dataclass
class DQNConfig(QLearningConfig):
    """DQN settings. :meth:`DQN.preset` gives tuned values per env family."""

    hidden: tuple[int, ...] = (256, 256)  # MLP widths (vector observations only)


class QNetwork(nn.Module):
    """Encoder then a linear head: ``(B, *obs_shape) -> (B, n_actions)``."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = make_encoder(obs_shape, hidden)
        self.head = nn.Linear(self.encoder.out_dim, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs))


class DQN(QAgent):
    """Deep Q-learning with a target network, experience replay and (optionally) Double DQN."""

    Config = DQNConfig

    @classmethod
    def preset(cls, family: str) -> DQNConfig:
        if family in ("gym", "popgym"):
            # RL Baselines3 Zoo's tuned CartPole-v1 settings (SB3 reaches 500 within 5e4 steps with them).
            return DQNConfig(lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000,
                             train_freq=256, gradient_steps=128, target_update=10, eps_start=1.0,
                             eps_end=0.04, eps_fraction=0.16, hidden=(256, 256))
        if family == "MinAtar":
            # Young & Tian 2019's DQN, with Adam in place of RMSProp; 4-frame stacks are not used there.
            return DQNConfig(lr=2.5e-4, batch_size=32, buffer_size=100_000, learning_starts=5_000,
                             train_freq=1, gradient_steps=1, target_update=1_000, eps_start=1.0,
                             eps_end=0.1, eps_fraction=0.02, eval_epsilon=0.0)
        if family == "ALE":
            # Mnih et al. 2015, with Adam (lr 1e-4, eps 1.5e-4) as in later DQN baselines, and a 100k buffer
            # that a laptop can hold (the paper's 1M needs ~28 GB of stacked uint8 frames).
            return DQNConfig(frame_stack=4, lr=1e-4, adam_eps=1.5e-4, batch_size=32, buffer_size=100_000,
                             learning_starts=50_000, train_freq=4, gradient_steps=1, target_update=10_000,
                             reward_clip=1.0, eps_start=1.0, eps_end=0.1, eps_fraction=0.1, eval_epsilon=0.05)
        raise ValueError(f"no DQN preset for env family {family!r}")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: DQNConfig, device: torch.device) -> None:
        super().__init__(obs_shape, n_actions, config, device,
                         QNetwork(tuple(obs_shape), n_actions, tuple(config.hidden)))

    def act(self, obs: np.ndarray, state: Any, epsilon: float, rng: np.random.Generator) -> tuple[int, Any]:
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions)), state
        with self.inference():
            q = self.q(torch.as_tensor(obs, device=self.device).unsqueeze(0))  # (1, A)
        return int(q.argmax(1)), state

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(s, .) for a batch of observations ``(B, *obs_shape)``."""
        with self.inference():
            return self.q(torch.as_tensor(obs, device=self.device)).cpu().numpy()

    def loss(self, batch: TransitionBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean TD loss on a batch of transitions (IS-weighted under prioritized replay), and scalars to log."""
        c, to = self.config, lambda x: torch.as_tensor(x, device=self.device)
        obs, next_obs, actions = to(batch.obs), to(batch.next_obs), to(batch.actions)
        rewards, terminated = to(batch.rewards), to(batch.terminated).float()
        if c.reward_clip:
            rewards = rewards.clamp(-c.reward_clip, c.reward_clip)
        q_taken = self.q(obs).gather(1, actions[:, None]).squeeze(1)  # (B,)
        with torch.no_grad():
            next_q = self.target(next_obs)  # (B, A)
            if c.double_dqn:  # the online net chooses, the target net evaluates
                next_value = next_q.gather(1, self.q(next_obs).argmax(1, keepdim=True)).squeeze(1)
            else:
                next_value = next_q.max(1).values
            target = rewards + c.gamma * (1.0 - terminated) * next_value  # (B,)
        loss = replay_loss(td_loss(q_taken, target, c.loss), q_taken, target, batch, c)
        return loss, {"q": q_taken.detach().mean().item()}
