"""SA-DQN: Q-networks built from self-attention, book chapter 7.

A Q-network maps what the agent has seen to one value per action and is trained on TD targets
(chapter 2). Self-attention changes only the network. Two ways to use it:

- **Over the history** (:class:`SADQN`, ``--algo sadqn``), in the spirit of the Deep Transformer
  Q-Network (Esslinger et al. 2022): the tokens are embeddings of the last ``K`` observations, with
  learned (or sinusoidal) positions; pre-norm blocks of *causal* self-attention read them; a linear
  head gives ``Q(h_t, .)`` at every position ``t`` from the tokens up to ``t``. Learning samples
  windows from :class:`~companion.buffers.SequenceReplayBuffer`, as DRQN does, and applies the TD loss
  at every position where the window's first episode is still running. When acting, the agent keeps
  its context window: the observations of the current episode, at most ``K = burn_in + seq_len`` of
  them. Every context the network reads has at most ``K`` observations: the TD loss reads the window's
  first ``K`` observations, and the bootstrap values read the window shifted by one (its last ``K``),
  so there are ``K`` positions and the loss trains every one of them.
- **Over entities** (:class:`EntitySADQN`, ``--algo sadqn-entity``), after relational deep RL
  (Zambaldi et al. 2018): the tokens are the cells of a CNN feature map (MinAtar's 8x8 locations),
  each with a learned position; non-causal self-attention lets every cell attend to every other;
  the tokens are max-pooled feature-wise and a small MLP gives ``Q(s, .)``. It sees one observation
  (or a frame stack), like DQN, and its attention says which objects attend to which.

This is not a sequence-to-sequence "translation" model with a DQN label: there is no decoder and
no target sequence; the only training signal is the TD error of the action taken.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor, nn

from companion.agents.base import QAgent, QLearningConfig, sequence_td, sequence_tensors
from companion.agents.dqn import DQN
from companion.attention import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    causal_mask,
)
from companion.buffers import SequenceBatch
from companion.networks import LocationCNN, make_encoder

__all__ = ["EntityQNetwork", "EntitySADQN", "HistoryQNetwork", "SADQN", "SADQNConfig", "TransformerBlock"]


@dataclasses.dataclass
class SADQNConfig(QLearningConfig):
    """Settings of both SA-DQN variants (``seq_len``/``burn_in``/``positions`` apply to the history one)."""

    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    gated: bool = False  # GTrXL's gated residuals (Parisotto et al. 2020) in place of x + sublayer(x)
    gate_bias: float = 2.0  # ... and their gate's initial bias b_g (the update gate starts near closed)
    positions: str = "learned"  # "learned" or "sinusoidal"
    seq_len: int = 16  # training window; the acting context holds up to burn_in + seq_len observations
    burn_in: int = 0
    hidden: tuple[int, ...] = (64,)  # observation encoder widths for vector observations
    head_hidden: int = 128  # entity variant: the MLP after pooling

    def validate(self) -> None:
        super().validate()
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', got {self.positions!r}")
        if self.seq_len < 1 or self.burn_in < 0 or self.num_layers < 1:
            raise ValueError(f"need seq_len >= 1, burn_in >= 0, num_layers >= 1; got {self.seq_len}, "
                             f"{self.burn_in}, {self.num_layers}")


def _blocks(c: SADQNConfig) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(c.d_model, c.num_heads, c.mlp_ratio, c.dropout, c.gated, c.gate_bias)
                         for _ in range(c.num_layers))


class HistoryQNetwork(nn.Module):
    """Observations ``(B, T, *obs_shape)`` -> Q-values ``(B, T, A)``; position ``t`` sees steps ``<= t``."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: SADQNConfig) -> None:
        super().__init__()
        self.encoder = make_encoder(obs_shape, config.hidden)
        self.embed = nn.Linear(self.encoder.out_dim, config.d_model)
        max_len = config.burn_in + config.seq_len  # K: the loss, the bootstrap and acting read at most K
        position_cls = LearnedPositionalEmbedding if config.positions == "learned" else SinusoidalPositionalEncoding
        self.positions = position_cls(max_len, config.d_model)
        self.blocks = _blocks(config)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, n_actions)

    def forward(self, obs: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Returns Q-values ``(B, T, A)`` and, if asked, each layer's weights ``(B, H, T, T)``."""
        batch, steps = obs.shape[:2]
        tokens = self.embed(self.encoder(obs.flatten(0, 1))).view(batch, steps, -1)  # (B, T, E)
        x = self.positions(tokens)
        mask = causal_mask(steps, device=obs.device)  # (T, T), True = may attend
        weights = []
        for block in self.blocks:
            x, w = block(x, mask, need_weights)
            if w is not None:
                weights.append(w)
        return self.head(self.norm(x)), weights


class SADQN(QAgent):
    """Q-learning with a causal transformer over the recent history (DTQN-style), on sequence replay."""

    Config = SADQNConfig
    recurrent = True  # the "state" is the context window of observations
    sequence_replay = True

    @classmethod
    def preset(cls, family: str) -> SADQNConfig:
        """The DRQN presets of chapter 2, with a transformer where DRQN has its LSTM."""
        if family in ("gym", "popgym"):
            return SADQNConfig(lr=1e-3, batch_size=32, buffer_size=100_000, learning_starts=2_000, train_freq=4,
                               gradient_steps=1, target_update=1_000, eps_start=1.0, eps_end=0.05,
                               eps_fraction=0.2, seq_len=16)
        if family == "MinAtar":
            return SADQNConfig(lr=2.5e-4, batch_size=32, buffer_size=100_000, learning_starts=5_000, train_freq=4,
                               gradient_steps=1, target_update=1_000, eps_start=1.0, eps_end=0.1,
                               eps_fraction=0.2, seq_len=8)
        if family == "ALE":
            return SADQNConfig(lr=1e-4, adam_eps=1.5e-4, batch_size=32, buffer_size=100_000,
                               learning_starts=50_000, train_freq=4, gradient_steps=1, target_update=10_000,
                               reward_clip=1.0, eps_start=1.0, eps_end=0.1, eps_fraction=0.1, eval_epsilon=0.05,
                               d_model=128, seq_len=8)
        raise ValueError(f"no SA-DQN preset for env family {family!r}")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: SADQNConfig, device: torch.device) -> None:
        config.validate()
        super().__init__(obs_shape, n_actions, config, device, HistoryQNetwork(tuple(obs_shape), n_actions, config))

    @property
    def context_len(self) -> int:
        """The most observations the agent acts from: ``K = burn_in + seq_len``, the network's positions.

        A window of ``K`` transitions has ``K + 1`` observations. The loss reads ``Q`` over the first
        ``K`` (positions ``0..K-1``) and the next-state values over the last ``K``, the window shifted by
        one, so position ``K - 1`` bootstraps from exactly the context the agent acts on. Two earlier
        versions read one more position, ``K``, whose embedding no loss ever trained: the first acted
        from it, the second bootstrapped one target in ``K`` from it (chapter 7 tells what each cost)."""
        return self.config.burn_in + self.config.seq_len

    def _context(self, obs: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """The acting context after ``obs``: ``(T, *obs_shape)``, oldest first, ``T <= context_len``."""
        return obs[None] if state is None else np.concatenate([state, obs[None]])[-self.context_len:]

    def act(self, obs: np.ndarray, state: np.ndarray | None, epsilon: float,
            rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """Append ``obs`` to the context (``None`` at an episode start) and act on the last position."""
        context = self._context(obs, state)
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions)), context
        with self.inference():
            q, _ = self.q(torch.as_tensor(context, device=self.device)[None])  # (1, T, A)
        return int(q[0, -1].argmax()), context

    def act_with_attention(self, obs: np.ndarray, state: np.ndarray | None, epsilon: float,
                           rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray]:
        """:meth:`act`, also returning where this step looked: the last position's weights in every layer
        and head, by lag, ``(num_layers, H, context_len)``; ``[..., k]`` is the weight on the observation
        ``k`` steps back (``k = 0``: this one), zero where the episode is shorter than ``k + 1`` steps."""
        context = self._context(obs, state)
        with self.inference():
            q, weights = self.q(torch.as_tensor(context, device=self.device)[None], need_weights=True)
        last = torch.stack([w[0, :, -1] for w in weights]).flip(-1).cpu().numpy()  # (N, H, T), lag 0 first
        by_lag = np.zeros((*last.shape[:2], self.context_len), dtype=np.float32)
        by_lag[..., : last.shape[-1]] = last
        action = int(rng.integers(self.n_actions)) if rng.random() < epsilon else int(q[0, -1].argmax())
        return action, context, by_lag

    def attention_weights(self, obs_seq: np.ndarray) -> list[np.ndarray]:
        """Each layer's weights ``(H, T, T)`` over one stretch of observations ``(T, *obs_shape)``."""
        with self.inference():
            _, weights = self.q(torch.as_tensor(obs_seq, device=self.device)[None], need_weights=True)
        return [w[0].cpu().numpy() for w in weights]

    def loss(self, batch: SequenceBatch) -> tuple[Tensor, dict[str, float]]:
        """The TD loss at every position of the window where its first episode still runs.

        The window's ``K + 1`` observations ``[o_0, o_1', ..., o_K']`` are read twice: the first ``K``
        give ``Q(o_<=t, a_t)`` at positions ``0..K-1``, and the last ``K`` (shifted by one) give the
        next-state values, position ``t`` seeing ``o_1' .. o_{t+1}'``: at ``t = K - 1`` exactly the
        agent's acting context. No position outside ``0..K-1`` is read."""
        c = self.config
        seq = sequence_tensors(batch, c, self.device, c.burn_in)
        q_online, _ = self.q_fn(seq.inputs[:, :-1])  # (B, K, A)
        with torch.no_grad():
            next_online = self.q_fn(seq.inputs[:, 1:])[0]  # (B, K, A): the Double-DQN argmax
            next_target = self.target_fn(seq.inputs[:, 1:])[0]  # (B, K, A)
        loss, _, q_taken = sequence_td(q_online, next_online, next_target, seq, c)
        return loss, {"q": seq.masked_mean(q_taken.detach()).item()}


class EntityQNetwork(nn.Module):
    """An image ``(B, C, H, W)`` -> location tokens -> self-attention among them -> max-pool -> MLP -> Q."""

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: SADQNConfig) -> None:
        super().__init__()
        self.cnn = LocationCNN(obs_shape)
        self.embed = nn.Linear(self.cnn.dim, config.d_model)
        self.positions = LearnedPositionalEmbedding(self.cnn.num_locations, config.d_model)  # one per cell
        self.blocks = _blocks(config)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Sequential(nn.Linear(config.d_model, config.head_hidden), nn.ReLU(),
                                  nn.Linear(config.head_hidden, n_actions))

    def forward(self, obs: Tensor, need_weights: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Q-values ``(B, A)``; with ``need_weights``, also each layer's weights ``(B, H, L, L)``."""
        x = self.positions(self.embed(self.cnn(obs)))  # (B, L, E)
        weights = []
        for block in self.blocks:
            x, w = block(x, None, need_weights)
            if w is not None:
                weights.append(w)
        q = self.head(self.norm(x).max(dim=1).values)  # feature-wise max over the L entities: (B, A)
        return (q, weights) if need_weights else q


class EntitySADQN(DQN):
    """DQN with self-attention over the cells of a CNN feature map (relational RL, Zambaldi et al. 2018)."""

    Config = SADQNConfig

    @classmethod
    def preset(cls, family: str) -> SADQNConfig:
        if family in ("MinAtar", "ALE"):  # the history preset's settings; one block, and DQN's 4 frames on Atari
            return dataclasses.replace(SADQN.preset(family), num_layers=1, frame_stack=4 if family == "ALE" else 1)
        raise ValueError(f"no entity SA-DQN preset for env family {family!r}: entities are image locations")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: SADQNConfig, device: torch.device) -> None:
        config.validate()
        QAgent.__init__(self, obs_shape, n_actions, config, device,
                        EntityQNetwork(tuple(obs_shape), n_actions, config))

    def entity_attention(self, obs: np.ndarray) -> list[np.ndarray]:
        """Each layer's weights ``(H, L, L)`` for one observation: row ``i`` is where entity ``i`` looks."""
        with self.inference():
            _, weights = self.q(torch.as_tensor(obs, device=self.device)[None], need_weights=True)
        return [w[0].cpu().numpy() for w in weights]

