"""Actor-critic agents: a policy and a value read from the same history, learned on-policy (book chapter 3).

An actor-critic agent keeps two functions of what it has seen, ``h_t`` (the current observation, a
stack of the last few, an LSTM state, or an attention read of the last ``K`` steps):

- the **actor** ``pi(a | h_t)``, a categorical distribution over the discrete actions;
- the **critic** ``V(h_t)``, the expected discounted return from here on under ``pi``.

The on-policy loop (:mod:`companion.loops.on_policy`) collects a :class:`~companion.buffers.Rollout` of
``n_steps`` steps from ``n_envs`` envs with the current policy, computes GAE advantages, and calls
:meth:`ActorCriticAgent.update`, which runs PPO's epochs of minibatches (:mod:`companion.agents.ppo`).

Three networks, one interface (:class:`ActorCriticNet`): ``step`` reads one step of ``N`` envs and
carries their state (acting); ``sequence`` re-reads a rollout of ``T`` steps from the state it started
from (learning). Both give the same numbers for the same parameters, which is what makes PPO's first
ratio exactly 1; the tests check it for each network.

- :class:`FeedForwardActorCritic`: separate actor and critic MLPs on the current observation (the
  Stable-Baselines3 default, ``[64, 64]`` tanh, orthogonal initialisation), or a shared CNN on images.
- :class:`RecurrentActorCritic`: an LSTM cell between the encoder and the two heads.
- :class:`AttentionActorCritic`: causal attention over a sliding window of the last ``K`` steps, with a
  learned bias per lag (:func:`companion.attention.window_mask`); keys and values of past steps are
  cached while acting. ``attend="critic"`` gives the attention to the critic only (the actor sees the
  current observation), to tell a better critic from a better policy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from companion.agents.base import Agent, compile_module
from companion.attention import (
    ChunkCache,
    EpisodicMemory,
    HierarchicalMemory,
    MemoryCache,
    TransformerBlock,
    window_mask,
)
from companion.buffers import Rollout
from companion.networks import make_encoder

__all__ = ["ActorCriticAgent", "ActorCriticConfig", "ActorCriticNet", "AttentionActorCritic",
           "FeedForwardActorCritic", "MemoryActorCritic", "RecurrentActorCritic", "explained_variance"]


@dataclasses.dataclass
class ActorCriticConfig:
    """Settings of the on-policy actor-critic agents (PPO, A2C and their memory variants).

    Steps count environment steps of all envs together: a rollout is ``n_envs * n_steps`` of them.
    """

    frame_stack: int = 1
    n_envs: int = 8  # parallel envs in the vector env
    n_steps: int = 32  # steps per env per rollout
    batch_size: int = 256  # samples per minibatch (memory torsos: batch_size // n_steps whole env sequences)
    n_epochs: int = 20  # passes over each rollout
    lr: float = 1e-3
    lr_schedule: str = "linear"  # "linear": lr * (1 - progress), to 0 at the end of the run; or "constant"
    optimizer: str = "adam"  # or "rmsprop" (A2C: alpha 0.99, eps 1e-5)
    adam_eps: float = 1e-5
    # Adam's fused kernel (one op for all parameters) in place of its default multi-tensor one: faster steps, the same
    # update up to float rounding (about 1e-8 apart after 50 steps), so off by default: the stored runs used the other
    fused_adam: bool = False
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip_range: float = 0.2  # PPO's epsilon; 0 = no clipping at all (A2C), whatever the schedule
    clip_schedule: str = "linear"  # as lr_schedule
    clip_range_vf: float = 0.0  # clip the value update around the old value; 0 = off
    normalize_advantage: bool = True  # per minibatch
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5  # 0 = off
    hidden: tuple[int, ...] = (64, 64)  # MLP widths (vector observations)
    activation: str = "tanh"  # or "relu"
    vector: str = "sync"  # gymnasium's SyncVectorEnv, or "async" (AsyncVectorEnv: one process per env)
    eval_epsilon: float = 0.0
    eval_sample: bool = False  # evaluate with sampled actions instead of the most likely one

    def validate(self) -> None:
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        choices = {"lr_schedule": ("linear", "constant"), "clip_schedule": ("linear", "constant"),
                   "optimizer": ("adam", "rmsprop"), "activation": ("tanh", "relu"), "vector": ("sync", "async")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError(f"need 0 < gamma <= 1 and 0 <= gae_lambda <= 1, got {self.gamma}, {self.gae_lambda}")
        if self.clip_range < 0 or self.clip_range_vf < 0:
            raise ValueError(f"clip ranges must be >= 0, got {self.clip_range}, {self.clip_range_vf}")


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)``: 1 for a perfect critic, 0 for one that predicts the
    mean, negative for worse; ``nan`` when the target does not vary."""
    variance = target.var(unbiased=False)
    if variance <= 0:
        return float("nan")
    return float(1 - (target - predicted).var(unbiased=False) / variance)


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------
def _activation(name: str) -> type[nn.Module]:
    return nn.Tanh if name == "tanh" else nn.ReLU


def _mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_dim, width), _activation(activation)()]
        in_dim = width
    return nn.Sequential(*layers)


def _orthogonal(module: nn.Module, gain: float) -> nn.Module:
    """Orthogonal weights with ``gain``, zero biases, for every linear layer in ``module`` (as in SB3's and
    CleanRL's PPO: ``sqrt(2)`` in the torso, 0.01 for the policy head, 1 for the value head)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
    return module


def _is_image(obs_shape: tuple[int, ...]) -> bool:
    return len(obs_shape) == 3


def _encoder(obs_shape: tuple[int, ...], config: ActorCriticConfig) -> tuple[nn.Module, int]:
    """Vectors: an MLP with ``hidden`` widths and ``activation``, orthogonally initialised; images: the
    course's CNNs (:func:`companion.networks.make_encoder`). Returns the module and its output width."""
    if _is_image(obs_shape):
        encoder = make_encoder(obs_shape)
        return encoder, encoder.out_dim
    encoder = _orthogonal(_mlp(math.prod(obs_shape), config.hidden, config.activation), math.sqrt(2))
    return encoder, config.hidden[-1] if config.hidden else math.prod(obs_shape)


class ActorCriticNet(nn.Module):
    """The interface of the actor-critic networks.

    A *state* is whatever the network carries between steps of ``N`` envs (``None``, an LSTM's ``(h, c)``,
    an attention cache); :meth:`step` reads one step and returns the next state; :meth:`sequence` re-reads
    ``T`` steps of ``B`` envs from a stored state. ``history_prefix`` is how many steps *before* a rollout
    :meth:`sequence` must see (an attention window reaches back past the rollout's first step).
    """

    history_prefix: int = 0
    #: whether minibatches must be whole env sequences (the network carries a state through time)
    sequential: ClassVar[bool] = False

    def initial_state(self, n: int) -> Any:
        return None

    def reset_state(self, state: Any, done: Tensor) -> Any:
        """The state with the envs where ``done`` ``(N,)`` is True set back to an episode's start."""
        return state

    def select_state(self, state: Any, index: Tensor) -> Any:
        """The state of the envs in ``index``."""
        return state

    def state_to_save(self, state: Any) -> Any:
        """The state as tensors, tuples and lists only, so that a checkpoint loads with ``weights_only=True``."""
        return state

    def state_from_saved(self, saved: Any) -> Any:
        """The inverse of :meth:`state_to_save`."""
        return saved

    def refresh_state(self, state: Any, prefix_obs: Tensor, prefix_starts: Tensor) -> Any:
        """The state recomputed under the current parameters from the last ``history_prefix`` steps
        ``(P, N, ...)``, after an update changed them (a cache of keys and values would be stale). An
        LSTM's state cannot be recomputed without the whole episode and is kept: learning re-reads each
        rollout from the state acting really had, so the two agree either way."""
        return state

    def step(self, obs: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        """``obs`` ``(N, *obs_shape)`` -> logits ``(N, A)``, values ``(N,)``, next state."""
        raise NotImplementedError

    def sequence(self, obs: Tensor, starts: Tensor, state: Any, prefix_obs: Tensor | None = None,
                 prefix_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``obs`` ``(B, T, *obs_shape)``, ``starts`` ``(B, T)`` -> logits ``(B, T, A)``, values ``(B, T)``."""
        raise NotImplementedError


class FeedForwardActorCritic(ActorCriticNet):
    """Actor and critic on the current observation (or a frame stack): no memory.

    Vectors: two separate MLPs (``hidden``, ``activation``) with linear heads, Stable-Baselines3's
    ``MlpPolicy``. Images: one shared CNN and two linear heads (CleanRL's Atari PPO).
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: ActorCriticConfig) -> None:
        super().__init__()
        self.actor_encoder, width = _encoder(obs_shape, config)
        self.critic_encoder = self.actor_encoder if _is_image(obs_shape) else _encoder(obs_shape, config)[0]
        self.policy = _orthogonal(nn.Linear(width, n_actions), 0.01)
        self.value = _orthogonal(nn.Linear(width, 1), 1.0)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs`` ``(M, *obs_shape)`` -> logits ``(M, A)``, values ``(M,)``."""
        return self.policy(self.actor_encoder(obs)), self.value(self.critic_encoder(obs)).squeeze(-1)

    def step(self, obs: Tensor, state: Any) -> tuple[Tensor, Tensor, Any]:
        logits, values = self(obs)
        return logits, values, None

    def sequence(self, obs: Tensor, starts: Tensor, state: Any, prefix_obs: Tensor | None = None,
                 prefix_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, steps = obs.shape[:2]
        logits, values = self(obs.flatten(0, 1))
        return logits.view(batch, steps, -1), values.view(batch, steps)


class RecurrentActorCritic(ActorCriticNet):
    """Encoder -> LSTM cell -> actor and critic heads, the state ``(h, c)`` ``(N, lstm_size)`` each.

    The state is reset to zeros *before* reading the first observation of an episode: in a rollout,
    where ``starts[:, t]`` is True. Learning re-reads each env's ``T`` steps from the state stored at the
    rollout's start, so no sequence starts from zeros in the middle of an episode.
    """

    sequential = True

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: Any) -> None:
        super().__init__()
        self.encoder, width = _encoder(obs_shape, config)
        self.cell = nn.LSTMCell(width, config.lstm_size)
        for name, param in self.cell.named_parameters():  # as CleanRL's ppo_atari_lstm
            nn.init.zeros_(param) if "bias" in name else nn.init.orthogonal_(param, 1.0)
        if config.forget_bias:  # gates are (input, forget, cell, output): the second quarter is the forget gate's
            size = config.lstm_size
            nn.init.constant_(self.cell.bias_ih[size:2 * size], config.forget_bias)
        self.policy = _orthogonal(nn.Linear(config.lstm_size, n_actions), 0.01)
        self.value = _orthogonal(nn.Linear(config.lstm_size, 1), 1.0)

    def initial_state(self, n: int) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(n, self.cell.hidden_size, device=self.policy.weight.device)
        return zeros, zeros.clone()

    def reset_state(self, state: tuple[Tensor, Tensor], done: Tensor) -> tuple[Tensor, Tensor]:
        keep = (~done).to(state[0].dtype)[:, None]  # (N, 1)
        return state[0] * keep, state[1] * keep

    def select_state(self, state: tuple[Tensor, Tensor], index: Tensor) -> tuple[Tensor, Tensor]:
        return state[0][index], state[1][index]

    def step(self, obs: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        h, c = self.cell(self.encoder(obs), state)  # (N, H)
        return self.policy(h), self.value(h).squeeze(-1), (h, c)

    def sequence(self, obs: Tensor, starts: Tensor, state: tuple[Tensor, Tensor], prefix_obs: Tensor | None = None,
                 prefix_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, steps = obs.shape[:2]
        features = self.encoder(obs.flatten(0, 1)).view(batch, steps, -1)  # (B, T, F)
        outputs = []
        for t in range(steps):
            state = self.reset_state(state, starts[:, t])  # a new episode starts at t: forget the old one
            state = self.cell(features[:, t], state)
            outputs.append(state[0])
        hidden = torch.stack(outputs, dim=1)  # (B, T, H)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


class AttentionActorCritic(ActorCriticNet):
    """Causal attention over the last ``K = context`` steps of the episode, then the heads.

    Each step's observation is encoded and embedded, ``x_t = W_e enc(o_t)``. Each of ``num_layers``
    pre-norm blocks lets position ``t`` attend to positions ``t - K + 1 .. t`` of the same episode, with
    a learned bias ``b[h, t - j]`` per head and lag added to the logits (the positions: a bias by lag
    leaves each key independent of where it sits in the window, so keys and values can be cached; a
    position *within the window* added to the inputs would change every key as the window slides).
    The critic (and, with ``attend="both"``, the actor) read the last block's output at ``t``: a summary of
    the last ``K`` observations, which is ``h_t`` only as far as the window holds what the return depends on.

    Acting keeps, per layer, the keys and values of the last ``K - 1`` steps: a step costs one query
    over ``K`` keys, not a pass over the window. Learning re-reads the rollout with the window mask,
    from ``history_prefix = num_layers * (K - 1)`` steps before its start, which is as far back as the
    first step's output depends on; so both give the same numbers.
    """

    sequential = True

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: Any) -> None:
        super().__init__()
        if config.attend not in ("both", "critic"):
            raise ValueError(f"attend must be 'both' or 'critic', got {config.attend!r}")
        self.context, self.attend = config.context, config.attend
        self.num_heads, self.head_dim = config.num_heads, config.d_model // config.num_heads
        self.encoder, width = _encoder(obs_shape, config)
        self.embed = nn.Linear(width, config.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(config.d_model, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.num_layers))
        # A linear recency prior to start from, in the form of ALiBi's fixed biases (Press et al. 2022) but
        # steeper (ALiBi's slopes for 4 heads are 1/4 ... 1/256): head h starts at -2^-h * lag, one head
        # sharply on the last steps, the others wider; then every bias is learned, per layer, head and lag.
        slopes = 2.0 ** -torch.arange(config.num_heads, dtype=torch.float32)  # (H,): 1, 1/2, 1/4, ...
        recency = -slopes[:, None] * torch.arange(config.context, dtype=torch.float32)  # (H, K)
        self.lag_bias = nn.Parameter(recency.repeat(config.num_layers, 1, 1))  # (layers, H, K)
        self.norm = nn.LayerNorm(config.d_model)
        self.value = _orthogonal(nn.Linear(config.d_model, 1), 1.0)
        if config.attend == "both":
            self.policy = _orthogonal(nn.Linear(config.d_model, n_actions), 0.01)
        else:  # the actor sees the current observation only, through FeedForwardActorCritic's MLP
            actor_config = dataclasses.replace(config, hidden=tuple(config.actor_hidden))
            self.actor_encoder, actor_width = _encoder(obs_shape, actor_config)
            self.policy = nn.Sequential(self.actor_encoder, _orthogonal(nn.Linear(actor_width, n_actions), 0.01))
        self.history_prefix = config.num_layers * (config.context - 1)

    # The state: per layer the cached keys and values of the last K - 1 steps, (N, H, K - 1, d_head), oldest
    # first, and which of those slots hold a step of the current episode, (N, K - 1).
    def initial_state(self, n: int) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        device = self.lag_bias.device
        shape = (n, self.num_heads, self.context - 1, self.head_dim)
        cache = [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in self.blocks]
        return cache, torch.zeros(n, self.context - 1, dtype=torch.bool, device=device)

    def reset_state(self, state: Any, done: Tensor) -> Any:
        cache, valid = state
        return cache, valid & ~done[:, None]

    def select_state(self, state: Any, index: Tensor) -> Any:
        cache, valid = state
        return [(k[index], v[index]) for k, v in cache], valid[index]

    def refresh_state(self, state: Any, prefix_obs: Tensor, prefix_starts: Tensor) -> Any:
        """Each layer's cached keys and values recomputed from the last ``P`` steps with the current
        parameters (which slots are valid does not change): acting after an update then equals
        re-reading the window, as learning does."""
        _, valid = state
        if self.context == 1:
            return state
        obs, starts = prefix_obs.transpose(0, 1), prefix_starts.transpose(0, 1)  # (N, P, ...), (N, P)
        n, length = starts.shape
        x = self.embed(self.encoder(obs.flatten(0, 1))).view(n, length, -1)  # (N, P, E)
        cache = []
        for block, bias in zip(self.blocks, self.lag_bias, strict=True):
            h = block.norm1(x)
            k, v = block.attention.project_key_value(h, h)  # (N, H, P, d_head)
            cache.append((k[:, :, -(self.context - 1):], v[:, :, -(self.context - 1):]))
            x, _ = block(x, window_mask(starts, self.context, bias))
        return cache, valid

    def _heads(self, hidden: Tensor, obs: Tensor) -> tuple[Tensor, Tensor]:
        value = self.value(hidden).squeeze(-1)
        return (self.policy(hidden) if self.attend == "both" else self.policy(obs)), value

    def step(self, obs: Tensor, state: Any, need_weights: bool = False) -> tuple[Tensor, Tensor, Any]:
        """One step of ``N`` envs; with ``need_weights``, the state is followed by each layer's weights
        ``(N, H, K)`` by lag (index 0: the current step)."""
        cache, valid = state
        x = self.embed(self.encoder(obs))  # (N, E)
        allowed = torch.cat([valid, valid.new_ones(len(valid), 1)], dim=1)  # (N, K): oldest ... current
        lags = torch.arange(self.context - 1, -1, -1, device=obs.device)  # (K,): K-1 ... 0
        new_cache, weights = [], []
        for block, (past_k, past_v), bias in zip(self.blocks, cache, self.lag_bias, strict=True):
            mask = bias[:, lags][None, :, None].masked_fill(~allowed[:, None, None], float("-inf"))  # (N, H, 1, K)
            x, k, v, w = block.step(x, past_k, past_v, mask, need_weights)
            new_cache.append((torch.cat([past_k, k], dim=2)[:, :, 1:], torch.cat([past_v, v], dim=2)[:, :, 1:]))
            if need_weights:
                weights.append(w[:, :, 0].flip(-1))  # (N, H, K), lag 0 first
        logits, values = self._heads(self.norm(x), obs)
        next_state = (new_cache, torch.cat([valid, valid.new_ones(len(valid), 1)], dim=1)[:, 1:])
        if need_weights:
            return logits, values, (next_state, torch.stack(weights, dim=1))  # (N, layers, H, K)
        return logits, values, next_state

    def sequence(self, obs: Tensor, starts: Tensor, state: Any, prefix_obs: Tensor | None = None,
                 prefix_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, steps = obs.shape[:2]
        prefix = 0 if prefix_obs is None else prefix_obs.shape[1]
        if prefix:
            window_obs, window_starts = torch.cat([prefix_obs, obs], dim=1), torch.cat([prefix_starts, starts], dim=1)
        else:
            window_obs, window_starts = obs, starts
        x = self.embed(self.encoder(window_obs.flatten(0, 1))).view(batch, prefix + steps, -1)  # (B, P+T, E)
        for block, bias in zip(self.blocks, self.lag_bias, strict=True):
            x, _ = block(x, window_mask(window_starts, self.context, bias))  # (B, H, P+T, P+T) mask
        logits, values = self._heads(self.norm(x[:, prefix:]), obs.flatten(0, 1))
        return logits.reshape(batch, steps, -1), values.view(batch, steps)


class MemoryActorCritic(ActorCriticNet):
    """An actor-critic with an episodic memory read by attention (book chapter 4).

    At step ``t`` the observation is encoded, ``z_t = enc(o_t)``. The agent reads its memory of the episode with
    the query ``q_t = W_q z_t``: attention over the slots of the last ``M = memory`` steps before ``t``
    (:class:`~companion.attention.EpisodicMemory`), giving ``r_t``. The heads read ``h_t = MLP([z_t, r_t])``.
    Then it writes the slot ``m_t = W_m z_t``. With ``--set prev_action=true --set prev_reward=true`` the
    observation carries ``a_{t-1}`` and ``r_{t-1}``, so a slot holds ``(o_t, a_{t-1}, r_{t-1})``.

    Unlike :class:`AttentionActorCritic` there is no window of ``K`` self-attention steps: one read reaches up to
    ``M`` steps back (the whole episode when ``M`` is at least its length), at ``O(M)`` per step while acting.
    Learning re-reads each rollout with the ``M`` steps before it (``history_prefix = M``), and gradients reach
    the slots of those steps too.

    With ``read="hierarchical"`` (book chapter 5) the memory is a
    :class:`~companion.attention.HierarchicalMemory`: the same slots in chunks of ``chunk_size`` steps, read by
    scoring each chunk's mean key and attending inside the ``top_k`` best chunks, ``O(M / c + k c)`` per step.
    """

    sequential = True

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: Any) -> None:
        super().__init__()
        self.encoder, width = _encoder(obs_shape, config)
        self.query = nn.Linear(width, config.d_model)
        self.slot = nn.Linear(width, config.d_model)
        self.hierarchical = getattr(config, "read", "flat") == "hierarchical"
        self.memory: EpisodicMemory | HierarchicalMemory = (
            HierarchicalMemory(config.d_model, config.num_heads, config.memory, config.chunk_size, config.top_k)
            if self.hierarchical else EpisodicMemory(config.d_model, config.num_heads, config.memory))
        self.torso = _orthogonal(nn.Sequential(nn.Linear(width + config.d_model, config.d_model), nn.Tanh()),
                                 math.sqrt(2))
        self.policy = _orthogonal(nn.Linear(config.d_model, n_actions), 0.01)
        self.value = _orthogonal(nn.Linear(config.d_model, 1), 1.0)
        self.history_prefix = config.memory

    def initial_state(self, n: int) -> MemoryCache | ChunkCache:
        return self.memory.empty(n)

    def reset_state(self, state: Any, done: Tensor) -> Any:
        return state.reset(done)

    def select_state(self, state: Any, index: Tensor) -> Any:
        return state.select(index)

    def state_to_save(self, state: Any) -> tuple[Tensor, ...]:
        return tuple(state)  # a plain tuple: torch.load(weights_only=True) rebuilds no class of ours

    def state_from_saved(self, saved: tuple[Tensor, ...]) -> MemoryCache | ChunkCache:
        return ChunkCache(*saved) if self.hierarchical else MemoryCache(*saved)

    def _heads(self, z: Tensor, read: Tensor) -> tuple[Tensor, Tensor]:
        h = self.torso(torch.cat([z, read], dim=-1))
        return self.policy(h), self.value(h).squeeze(-1)

    def step(self, obs: Tensor, state: Any, need_weights: bool = False) -> tuple[Tensor, Tensor, Any]:
        """One step of ``N`` envs: read, then write. With ``need_weights`` the state is followed by the read's
        weights by lag, ``(N, 1, H, M + 1)`` (index ``k``: the step ``k`` back; lag 0, the current step, is never
        read and stays 0), shaped as :class:`AttentionActorCritic`'s for :mod:`companion.viz`; a hierarchical
        read gives each step's weight in the output, its chunk's weight times its weight inside the chunk."""
        z = self.encoder(obs)  # (N, F)
        read, weights = self.memory.read_step(self.query(z), state, need_weights)  # (N, E)
        logits, values = self._heads(z, read)
        next_state = self.memory.write_step(self.slot(z), state)
        if need_weights:
            by_lag = self.memory.weights_by_lag(weights, state)  # (N, H, M + 1)
            return logits, values, (next_state, by_lag[:, None])
        return logits, values, next_state

    def sequence(self, obs: Tensor, starts: Tensor, state: Any, prefix_obs: Tensor | None = None,
                 prefix_starts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, steps = obs.shape[:2]
        if prefix_obs is not None and prefix_obs.shape[1]:
            obs_all, starts_all = torch.cat([prefix_obs, obs], dim=1), torch.cat([prefix_starts, starts], dim=1)
        else:
            obs_all, starts_all = obs, starts
        z = self.encoder(obs_all.flatten(0, 1)).view(batch, obs_all.shape[1], -1)  # (B, P+T, F)
        z_now = z[:, -steps:]
        if self.hierarchical:  # chunks are counted from the episode's start: where did this sequence begin?
            first = None if state is None else state.position - (obs_all.shape[1] - steps)  # (B,) its episode step
            read, _ = self.memory.read_sequence(self.query(z_now), self.slot(z), starts_all, first)  # (B, T, E)
        else:
            read, _ = self.memory.read_sequence(self.query(z_now), self.slot(z), starts_all)  # (B, T, E)
        logits, values = self._heads(z_now, read)
        return logits, values

    def refresh_state(self, state: Any, prefix_obs: Tensor, prefix_starts: Tensor) -> Any:
        """The cached keys and values recomputed from the last ``M`` steps under the current parameters."""
        obs = prefix_obs.transpose(0, 1)  # (N, P, ...)
        n, length = obs.shape[:2]
        slots = self.slot(self.encoder(obs.flatten(0, 1))).view(n, length, -1)
        return self.memory.refresh(slots, state)


# --------------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------------
class ActorCriticAgent(Agent):
    """An actor-critic agent: a network with a policy and a value head, its optimizer, and PPO's update.

    What the on-policy loop uses: :meth:`rollout_state` and :meth:`step` to act in ``N`` envs,
    :meth:`reset_state` at episode ends, :meth:`value` to bootstrap, :meth:`set_progress` for the
    schedules, :meth:`update` on a finished rollout. The loss is :meth:`loss` (in :mod:`.ppo`).
    """

    loop = "on_policy"
    recurrent = False

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: ActorCriticConfig, device: torch.device,
                 network: ActorCriticNet) -> None:
        super().__init__(obs_shape, n_actions, config, device)
        config.validate()
        self.net = network.to(device)
        if config.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(self.net.parameters(), lr=config.lr,
                                                                        alpha=0.99, eps=1e-5)
        else:
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr, eps=config.adam_eps,
                                              fused=config.fused_adam or None)
        self.progress_remaining = 1.0
        #: what :meth:`evaluate_batch` calls: the network's ``forward`` and ``sequence``, or with :meth:`compile`
        #: their ``torch.compile`` wrappers (same parameters); acting and checkpoints use ``net``
        self.forward_fn: Any = self.net
        self.sequence_fn: Any = self.net.sequence

    def compile(self) -> None:
        """``torch.compile`` the network's ``forward`` (feed-forward) or ``sequence`` (recurrent, attention and
        memory torsos) for the update's minibatches (:meth:`~companion.agents.base.Agent.compile`)."""
        if self.net.sequential:
            self.sequence_fn = compile_module(self.net.sequence)
        else:
            self.forward_fn = compile_module(self.net)
        self._mark_compiled()

    @property
    def history_prefix(self) -> int:
        return self.net.history_prefix

    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        return {"net": self.net, "optimizer": self.optimizer}

    def policy_network(self) -> nn.Module:
        return self.net

    # -- schedules ----------------------------------------------------------------------------------
    def set_progress(self, remaining: float) -> None:
        """Told before each update the fraction of the run still to come (1 at the start, ~0 at the end)."""
        self.progress_remaining = remaining
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * (remaining if c.lr_schedule == "linear" else 1.0)

    @property
    def clip_range(self) -> float | None:
        """PPO's epsilon now (annealed with the schedule), or ``None`` if the config turns clipping off."""
        c = self.config
        if c.clip_range == 0:
            return None
        return c.clip_range * (self.progress_remaining if c.clip_schedule == "linear" else 1.0)

    # -- acting in N envs ---------------------------------------------------------------------------
    def rollout_state(self, n: int) -> Any:
        """The state of ``n`` envs at their episodes' start."""
        return self.net.initial_state(n)

    def reset_state(self, state: Any, done: np.ndarray) -> Any:
        return self.net.reset_state(state, torch.as_tensor(done, device=self.device))

    def select_state(self, state: Any, index: np.ndarray) -> Any:
        return self.net.select_state(state, torch.as_tensor(index, device=self.device))

    def state_to_save(self, state: Any) -> Any:
        """The acting state as a checkpoint holds it (:meth:`ActorCriticNet.state_to_save`)."""
        return self.net.state_to_save(state)

    def state_from_saved(self, saved: Any) -> Any:
        return self.net.state_from_saved(saved)

    def refresh_state(self, state: Any, prefix_obs: Tensor, prefix_starts: Tensor) -> Any:
        """After an update: the acting state recomputed under the new parameters where it can be
        (:meth:`ActorCriticNet.refresh_state`)."""
        with torch.no_grad():
            return self.net.refresh_state(state, prefix_obs, prefix_starts)

    def _obs(self, obs: np.ndarray) -> Tensor:
        """Observations as a tensor: image frames stay bytes (the CNNs scale them), vectors become float32."""
        tensor = torch.as_tensor(obs, device=self.device)
        return tensor if tensor.dtype == torch.uint8 else tensor.float()

    def step(self, obs: np.ndarray, state: Any) -> tuple[np.ndarray, Tensor, Tensor, Any]:
        """Sample actions for ``N`` envs from ``pi`` (torch's generator): ``(actions (N,), log_probs (N,),
        values (N,), next_state)``."""
        with torch.no_grad():
            logits, values, state = self.net.step(self._obs(obs), state)
            dist = Categorical(logits=logits)
            actions = dist.sample()
            return actions.cpu().numpy(), dist.log_prob(actions), values, state

    def value(self, obs: np.ndarray, state: Any) -> Tensor:
        """``V`` after reading ``obs`` ``(N, ...)`` from ``state``, which is left as it was: ``(N,)``."""
        with torch.no_grad():
            return self.net.step(self._obs(obs), state)[1]

    # -- acting in one env (evaluation) -------------------------------------------------------------
    def initial_state(self) -> Any:
        return self.net.initial_state(1)

    def act(self, obs: np.ndarray, state: Any, epsilon: float, rng: np.random.Generator) -> tuple[int, Any]:
        """The most likely action (or a sample, with ``eval_sample``); the state reads every observation."""
        with self.inference():
            logits, _, state = self.net.step(self._obs(obs)[None], state)
        if rng.random() < epsilon:
            return int(rng.integers(self.n_actions)), state
        if self.config.eval_sample:
            probs = torch.softmax(logits[0].double(), -1).cpu().numpy()
            return int(rng.choice(self.n_actions, p=probs / probs.sum())), state
        return int(logits[0].argmax()), state

    # -- learning -----------------------------------------------------------------------------------
    def minibatches(self, rollout: Rollout) -> Iterator[dict[str, Any]]:
        """One epoch's minibatches, in an order drawn from torch's generator.

        Feed-forward networks: ``batch_size`` samples drawn without replacement from all ``T * N``.
        Networks with a state: ``batch_size // n_steps`` whole env sequences each, with their stored
        initial state (and the steps before the rollout, for attention).
        """
        steps, envs = rollout.n_steps, rollout.n_envs
        if not self.net.sequential:
            flat = {"obs": rollout.obs.flatten(0, 1), **{k: getattr(rollout, k).flatten(0, 1) for k in
                    ("actions", "log_probs", "values", "advantages", "returns")}}
            order = torch.randperm(steps * envs, device=self.device)
            for start in range(0, steps * envs, self.config.batch_size):
                idx = order[start:start + self.config.batch_size]
                yield {k: v[idx] for k, v in flat.items()}
            return
        per_batch = max(1, self.config.batch_size // steps)
        order = torch.randperm(envs, device=self.device)
        for start in range(0, envs, per_batch):
            idx = order[start:start + per_batch]
            batch = {k: getattr(rollout, k)[:, idx].transpose(0, 1) for k in  # (B, T, ...)
                     ("obs", "episode_starts", "actions", "log_probs", "values", "advantages", "returns")}
            batch["state"] = self.net.select_state(rollout.initial_state, idx)
            if rollout.prefix_obs is not None and self.history_prefix:
                batch["prefix_obs"] = rollout.prefix_obs[:, idx].transpose(0, 1)
                batch["prefix_starts"] = rollout.prefix_starts[:, idx].transpose(0, 1)
            yield batch

    def evaluate_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Logits and values of a minibatch under the current parameters, flat: ``(M, A)``, ``(M,)``."""
        if not self.net.sequential:
            return self.forward_fn(batch["obs"])
        logits, values = self.sequence_fn(batch["obs"], batch["episode_starts"], batch["state"],
                                          batch.get("prefix_obs"), batch.get("prefix_starts"))
        return logits.flatten(0, 1), values.flatten()

    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def minibatch_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One gradient step on :meth:`loss` over one minibatch (gradient norm clipped, optimizer step); its
        scalars."""
        c = self.config
        with self._compile_note():
            loss, info = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.max_grad_norm:
                nn.utils.clip_grad_norm_(self.net.parameters(), c.max_grad_norm)
            self.optimizer.step()
        return info

    def update(self, rollout: Rollout) -> dict[str, float]:
        """``n_epochs`` passes of minibatch gradient steps on :meth:`loss`; each scalar's mean over all of them
        (Stable-Baselines3 logs the approximate KL of the last epoch only), with the explained variance of the
        rollout's values against its GAE targets and the learning rate."""
        c = self.config
        sums: dict[str, float] = {}
        count = 0
        for _ in range(c.n_epochs):
            for batch in self.minibatches(rollout):
                info = self.minibatch_step(batch)
                for key, value in info.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
        info = {k: v / count for k, v in sums.items()}
        info["explained_variance"] = explained_variance(rollout.values.flatten(), rollout.returns.flatten())
        info["lr"] = self.optimizer.param_groups[0]["lr"]
        return info
