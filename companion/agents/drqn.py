"""DRQN: a recurrent Q-network for partially observable tasks (Hausknecht & Stone 2015), book chapter 2.

Implementation details:

1. Encoder (from :mod:`companion.networks`) -> LSTM -> linear head, one Q-value per action at every step.
2. Acting carries the LSTM state ``(h, c)`` from step to step; it is reset to zeros at episode starts.
3. Learning uses "random updates": windows of ``seq_len`` consecutive transitions from
   :class:`~companion.buffers.SequenceReplayBuffer`, each unrolled from a **zero** state. Positions
   after the window's episode ended are masked out of the loss. An optional ``burn_in`` prefix only
   warms the state up (no loss on it), as in R2D2 (Kapturowski et al. 2019). One difference: the
   gradient of the later positions' loss flows back through the burn-in steps (R2D2 uses them only
   to produce a start state).
   With ``stored_state=True`` (R2D2's stored state) replay keeps the LSTM state ``(h, c)`` the agent
   acted from at every step, and each window is unrolled from the state stored at its first step (by
   the network as it was then: "stale", which the burn-in refreshes) instead of from zeros. While
   acting, the state runs through whole episodes (500 steps on CartPole); a window started from zeros
   in the middle of an episode is a situation the acting network never meets. The state is kept for
   every transition (``2 * lstm_size`` floats: 100 MB for CartPole's 100k-step buffer, 410 MB with the
   ALE preset's LSTM of 512), where R2D2 keeps one per stored sequence.
4. The TD loss is applied at every (unmasked) position. The targets unroll the target network over
   the same window shifted by one step, ``[o_0, o_1', ..., o_T']`` (the ``o'`` are next observations),
   so that the value of ``o_t'`` is computed with the state that has seen the window up to it.
5. Double DQN, Huber loss, gradient clipping and the hard target update are as in :mod:`.dqn`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from companion.agents.base import QAgent, QLearningConfig, sequence_td, sequence_tensors
from companion.buffers import SequenceBatch
from companion.networks import make_encoder

__all__ = ["DRQN", "DRQNConfig", "RecurrentQNetwork"]

LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class DRQNConfig(QLearningConfig):
    """DRQN settings. :meth:`DRQN.preset` gives values per env family."""

    hidden: tuple[int, ...] = (128,)  # MLP encoder widths (vector observations only)
    lstm_size: int = 128
    seq_len: int = 16  # positions trained on per window
    burn_in: int = 0  # extra leading positions that only warm up the state
    stored_state: bool = False  # R2D2: unroll each window from the state stored when acting, not from zeros


class RecurrentQNetwork(nn.Module):
    """``(B, T, *obs_shape)`` and an LSTM state -> Q-values ``(B, T, n_actions)`` and the new state."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, hidden: tuple[int, ...], lstm_size: int) -> None:
        super().__init__()
        self.encoder = make_encoder(obs_shape, hidden)
        self.lstm = nn.LSTM(self.encoder.out_dim, lstm_size, batch_first=True)
        self.head = nn.Linear(lstm_size, n_actions)

    def forward(self, obs: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        batch, steps = obs.shape[:2]
        features = self.encoder(obs.flatten(0, 1)).view(batch, steps, -1)  # (B, T, F)
        out, state = self.lstm(features, state)  # (B, T, lstm_size); None = zero state
        return self.head(out), state


class DRQN(QAgent):
    """Deep recurrent Q-learning on sequence replay."""

    Config = DRQNConfig
    recurrent = True
    sequence_replay = True

    @classmethod
    def preset(cls, family: str) -> DRQNConfig:
        if family in ("gym", "popgym"):
            return DRQNConfig(lr=1e-3, batch_size=32, buffer_size=100_000, learning_starts=2_000, train_freq=4,
                              gradient_steps=1, target_update=1_000, eps_start=1.0, eps_end=0.05,
                              eps_fraction=0.2, hidden=(128,), lstm_size=128, seq_len=16)
        if family == "MinAtar":
            return DRQNConfig(lr=2.5e-4, batch_size=32, buffer_size=100_000, learning_starts=5_000, train_freq=1,
                              gradient_steps=1, target_update=1_000, eps_start=1.0, eps_end=0.1,
                              eps_fraction=0.02, lstm_size=128, seq_len=8)
        if family == "ALE":
            # Hausknecht & Stone 2015: single frames, LSTM 512, 10-step unrolls, rewards clipped.
            return DRQNConfig(lr=1e-4, adam_eps=1.5e-4, batch_size=32, buffer_size=100_000,
                              learning_starts=50_000, train_freq=4, gradient_steps=1, target_update=10_000,
                              reward_clip=1.0, eps_start=1.0, eps_end=0.1, eps_fraction=0.1, eval_epsilon=0.05,
                              lstm_size=512, seq_len=10)
        raise ValueError(f"no DRQN preset for env family {family!r}")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: DRQNConfig, device: torch.device) -> None:
        if config.seq_len < 1 or config.burn_in < 0:
            raise ValueError(f"need seq_len >= 1 and burn_in >= 0, got {config.seq_len}, {config.burn_in}")
        super().__init__(obs_shape, n_actions, config, device,
                         RecurrentQNetwork(tuple(obs_shape), n_actions, tuple(config.hidden), config.lstm_size))

    def initial_state(self) -> LSTMState | None:
        return None  # nn.LSTM reads None as zeros

    @property
    def replay_state_size(self) -> int:
        """``2 * lstm_size`` floats (``h`` then ``c``) with ``stored_state``, else 0."""
        return 2 * self.config.lstm_size if self.config.stored_state else 0

    def replay_state(self, state: LSTMState | None) -> np.ndarray:
        """``(h, c)`` as one ``(2 * lstm_size,)`` array; zeros for ``None`` (an episode's start)."""
        if state is None:
            return np.zeros(self.replay_state_size, np.float32)
        return torch.cat([state[0].reshape(-1), state[1].reshape(-1)]).cpu().numpy()

    def _window_state(self, batch: SequenceBatch) -> LSTMState | None:
        """The state each window is unrolled from: the stored one ``(1, B, H)`` twice, or ``None`` (zeros)."""
        if not self.config.stored_state:
            return None
        if batch.states is None:
            raise ValueError("stored_state is set, but the batch carries no states")
        states = torch.as_tensor(batch.states, device=self.device)  # (B, 2H)
        h, c = states.chunk(2, dim=1)
        return h[None].contiguous(), c[None].contiguous()

    def act(self, obs: np.ndarray, state: LSTMState | None, epsilon: float,
            rng: np.random.Generator) -> tuple[int, LSTMState]:
        # The state must see every observation, so the forward pass runs even when exploring.
        with self.inference():
            q, state = self.q(torch.as_tensor(obs, device=self.device)[None, None], state)  # (1, 1, A)
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions)), state
        return int(q[0, 0].argmax()), state

    def loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The TD loss averaged over the unmasked positions after the burn-in, and scalars to log."""
        seq = sequence_tensors(batch, self.config, self.device, self.config.burn_in)
        start = self._window_state(batch)  # None: a zero state
        q_all, _ = self.q_fn(seq.inputs, start)  # (B, T+1, A)
        with torch.no_grad():
            next_q = self.target_fn(seq.inputs, start)[0][:, 1:]  # (B, T, A)
        loss, _, q_taken = sequence_td(q_all[:, :-1], q_all[:, 1:], next_q, seq, self.config)
        return loss, {"q": seq.masked_mean(q_taken.detach()).item()}
