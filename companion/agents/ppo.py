"""PPO and A2C, with a feed-forward, a recurrent or an attention torso (book chapter 3).

Proximal policy optimisation (Schulman et al. 2017) takes ``n_epochs`` passes of minibatch gradient
steps over each rollout on

    L(theta) = - E[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)]      rho_t = pi(a_t|h_t) / pi_old(a_t|h_t)
               + c_v E[(V(h_t) - R_t)^2] - c_e E[H(pi(.|h_t))]

with GAE advantages ``A_t`` (Schulman et al. 2016) and returns ``R_t = A_t + V_old(h_t)``.

Implementation details, as in Stable-Baselines3 (whose RL-Zoo settings the presets take) and CleanRL:

1. Vector envs (gymnasium's ``SyncVectorEnv``; ``vector="async"`` for ``AsyncVectorEnv``), ``n_envs`` of
   them, each reset with its own episode seeds.
2. A time limit is not a terminal state: where an episode is truncated, ``gamma * V(final obs)`` is added
   to the last reward, so the advantage bootstraps through it.
3. Advantages are normalised per minibatch (``normalize_advantage``).
4. The value loss is the squared error (no 1/2: ``vf_coef`` = 0.5 plays that part). Optionally
   (``clip_range_vf``, off in every preset) it is clipped around the old value as in OpenAI's baselines and
   CleanRL, taking the larger of the two losses (SB3 takes the clipped prediction's loss alone).
5. Gradients are clipped to a global norm of ``max_grad_norm``; Adam with ``eps=1e-5``.
6. The learning rate and the clip range anneal linearly to 0 over the run (``lin_`` in RL-Zoo).
7. Orthogonal initialisation, gain 0.01 for the policy head and 1 for the value head.
8. Memory torsos re-read each env's whole rollout from the state it started from; minibatches are sets
   of envs (CleanRL's ``ppo_atari_lstm``).

A2C (Mnih et al. 2016) is the same update with one epoch, one minibatch (the whole rollout) and no
advantage normalisation (Huang et al. 2022, "A2C is a special case of PPO"): the ratio is then exactly 1
at the gradient step, the clip never binds, and the gradient is A2C's ``-A_t grad log pi(a_t|h_t)``. Its
preset is RL-Zoo's (5 steps, RMSprop, lambda = 1).

PPO's presets: the classic-control tasks that RL-Zoo lists have their own
(:data:`~companion.agents.ppo.CLASSIC_CONTROL`); any other env takes its family's (:meth:`PPO.preset`). The
presets take RL-Zoo's *hyperparameters*; the networks are the
companion's. (RL-Zoo's ``ppo_lstm``
entry for CartPoleNoVel also normalises observations and rewards and gives the critic its own LSTM of
64; ``ppo-lstm`` here shares one LSTM of 128 between the heads and normalises nothing.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Categorical

from companion.agents.actor_critic import (
    ActorCriticAgent,
    ActorCriticConfig,
    AttentionActorCritic,
    FeedForwardActorCritic,
    MemoryActorCritic,
    RecurrentActorCritic,
)
from companion.agents.base import EnvPreset

__all__ = ["A2C", "CLASSIC_CONTROL", "PPO", "PPOAttention", "PPOAttentionConfig", "PPOConfig", "PPOLSTM",
           "PPOLSTMConfig", "PPOMemory", "PPOMemoryConfig", "PPOHierarchicalMemory", "PPOHierarchicalMemoryConfig",
           "ppo_loss"]


@dataclasses.dataclass
class PPOConfig(ActorCriticConfig):
    """PPO (and A2C) settings. :meth:`PPO.preset` gives tuned values per env family."""


@dataclasses.dataclass
class PPOLSTMConfig(PPOConfig):
    """Recurrent PPO: an LSTM cell of ``lstm_size`` between the encoder and the heads."""

    hidden: tuple[int, ...] = (64,)
    lstm_size: int = 128
    forget_bias: float = 0.0  # the forget gate's initial bias (CleanRL's 0; 1 is Jozefowicz et al. 2015's advice)


@dataclasses.dataclass
class PPOAttentionConfig(PPOConfig):
    """PPO whose torso attends over the last ``context`` steps (both heads, or the critic only)."""

    hidden: tuple[int, ...] = (64,)
    context: int = 16  # K: the window, the current step included
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 1
    mlp_ratio: int = 2
    attend: str = "both"  # "both": actor and critic read the attention; "critic": the actor sees o_t only
    actor_hidden: tuple[int, ...] = (64, 64)  # attend="critic": the actor's MLP, as PPO's

    def validate(self) -> None:
        super().validate()
        if self.context < 1 or self.num_layers < 1 or self.d_model % self.num_heads:
            raise ValueError(f"need context >= 1, num_layers >= 1 and d_model a multiple of num_heads; got "
                             f"{self.context}, {self.num_layers}, {self.d_model}, {self.num_heads}")
        if self.attend not in ("both", "critic"):
            raise ValueError(f"attend must be 'both' or 'critic', got {self.attend!r}")


@dataclasses.dataclass
class PPOMemoryConfig(PPOConfig):
    """PPO with an episodic memory read by attention (chapter 4): ``memory`` slots, one per past step."""

    hidden: tuple[int, ...] = (64,)
    d_model: int = 64
    num_heads: int = 4
    memory: int = 256  # M: how many past steps a read reaches back
    read: str = "flat"  # "flat": attention over every slot; "hierarchical": the top_k chunks (chapter 5)
    chunk_size: int = 16  # read="hierarchical": c, steps per chunk (memory must be a multiple of it)
    top_k: int = 2  # read="hierarchical": k, chunks read per step

    def validate(self) -> None:
        super().validate()
        if self.memory < 1 or self.d_model % self.num_heads:
            raise ValueError(f"need memory >= 1 and d_model a multiple of num_heads; got {self.memory}, "
                             f"{self.d_model}, {self.num_heads}")
        if self.read not in ("flat", "hierarchical"):
            raise ValueError(f"read must be 'flat' or 'hierarchical', got {self.read!r}")
        if self.read == "hierarchical" and (self.chunk_size < 1 or self.top_k < 1 or self.memory % self.chunk_size):
            raise ValueError(f"read='hierarchical' needs chunk_size >= 1, top_k >= 1 and memory a multiple of "
                             f"chunk_size; got memory {self.memory}, chunk_size {self.chunk_size}, top_k {self.top_k}")


@dataclasses.dataclass
class PPOHierarchicalMemoryConfig(PPOMemoryConfig):
    """:class:`PPOMemoryConfig` with the hierarchical read (chapter 5): chunks of 16 steps, the best 2 read."""

    read: str = "hierarchical"


#: RL Baselines3 Zoo's PPO hyperparameters for the classic-control tasks it lists, as this config's fields:
#: hyperparams/ppo.yml of DLR-RM/rl-baselines3-zoo at commit 22e3ff2450fd92033f7f032915e1f64894a09584
#: (2026-04-23), with SB3's PPO defaults (lr 3e-4 and clip 0.2, both constant; minibatches of 64; vf_coef 0.5;
#: gradient norm 0.5; Adam eps 1e-5; [64, 64] tanh MLPs) where a row does not set a value. RL-Zoo's names ->
#: ours: learning_rate -> lr (with lr_schedule "linear" for ``lin_``), clip_range (+ clip_schedule), n_timesteps ->
#: steps (the book budget's run length). Not carried over: ``normalize: true`` of MountainCar-v0 and Acrobot-v1
#: (VecNormalize: running normalisation of observations and rewards, which the companion's PPO does not have).
#: Not here: Pendulum-v1 (continuous actions; the companion's actors are categorical) and LunarLander-v3 (needs
#: Box2D, not a dependency of the companion). These rows are PPO's own: A2C and PPO's memory variants keep their
#: family presets.
CLASSIC_CONTROL: dict[str, EnvPreset] = {
    # RL-Zoo: "tuned"; its 1e5 steps are not taken (steps=0): the book budget keeps the family's 50k, as the
    # chapter-3 runs had. The family default of "gym" and "popgym".
    "CartPole-v1": EnvPreset(steps=0, settings=dict(
        n_envs=8, n_steps=32, batch_size=256, n_epochs=20, lr=1e-3, lr_schedule="linear", gamma=0.98,
        gae_lambda=0.8, clip_range=0.2, clip_schedule="linear", ent_coef=0.0)),
    "MountainCar-v0": EnvPreset(steps=1_000_000, settings=dict(
        n_envs=16, n_steps=16, batch_size=64, n_epochs=4, lr=3e-4, lr_schedule="constant", gamma=0.99,
        gae_lambda=0.98, clip_range=0.2, clip_schedule="constant", ent_coef=0.0)),
    "Acrobot-v1": EnvPreset(steps=1_000_000, settings=dict(
        n_envs=16, n_steps=256, batch_size=64, n_epochs=4, lr=3e-4, lr_schedule="constant", gamma=0.99,
        gae_lambda=0.94, clip_range=0.2, clip_schedule="constant", ent_coef=0.0)),
}


def ppo_loss(logits: Tensor, values: Tensor, actions: Tensor, old_log_probs: Tensor, old_values: Tensor,
             advantages: Tensor, returns: Tensor, *, clip_range: float | None, clip_range_vf: float, normalize: bool,
             vf_coef: float, ent_coef: float) -> tuple[Tensor, dict[str, float]]:
    """PPO's clipped objective on a flat minibatch of ``M`` samples.

    Args:
        logits: ``(M, A)`` and values ``(M,)`` under the current parameters.
        actions, old_log_probs, old_values, advantages, returns: ``(M,)``, from the rollout.
        clip_range: PPO's epsilon (annealed, it reaches 0 at the run's end: the ratio is then pinned at 1);
            ``None`` turns the clip off (the plain policy gradient of A2C).

    Returns:
        The loss to minimise and scalars to log: the three terms, the approximate KL divergence
        ``E[(rho - 1) - log rho]`` (Schulman's low-variance estimator) and the fraction of clipped ratios.
    """
    dist = Categorical(logits=logits)
    log_probs = dist.log_prob(actions)
    entropy = dist.entropy().mean()
    if normalize and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    if clip_range is not None:
        clipped = ratio.clamp(1 - clip_range, 1 + clip_range)
        policy_loss = -torch.min(advantages * ratio, advantages * clipped).mean()
    else:
        policy_loss = -(advantages * ratio).mean()
    value_loss = (values - returns) ** 2
    if clip_range_vf > 0:
        clipped_values = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
        value_loss = torch.max(value_loss, (clipped_values - returns) ** 2)
    value_loss = value_loss.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    with torch.no_grad():
        info = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item(),
                "approx_kl": ((ratio - 1) - log_ratio).mean().item(),
                "clip_fraction": ((ratio - 1).abs() > clip_range).float().mean().item() if clip_range is not None
                else 0.0}
    return loss, info


class PPO(ActorCriticAgent):
    """PPO with separate actor and critic MLPs on the current observation (or a frame stack)."""

    Config = PPOConfig
    ENV_PRESETS = CLASSIC_CONTROL

    @classmethod
    def preset(cls, family: str) -> PPOConfig:
        """The env family's settings; for PPO itself, an env with a row in :data:`CLASSIC_CONTROL` takes that row."""
        if family in ("gym", "popgym"):
            # RL Baselines3 Zoo's tuned CartPole-v1 settings (hyperparams/ppo.yml; the same for CartPoleNoVel in
            # ppo_lstm.yml): 8 envs x 32 steps, one minibatch of 256, 20 epochs, lr 1e-3 and clip 0.2 annealed
            # linearly, gamma 0.98, lambda 0.8, no entropy bonus; SB3's defaults for the rest.
            return cls.Config(**CLASSIC_CONTROL["CartPole-v1"].settings)
        if family in ("MinAtar", "ALE"):
            # RL-Zoo's Atari PPO (hyperparams/ppo.yml), as in CleanRL's ppo_atari (Huang et al. 2022, "The 37
            # implementation details of PPO"): 8 envs x 128 steps, 4 minibatches, 4 epochs, lr 2.5e-4 and clip 0.1
            # annealed (CleanRL anneals the lr only), gamma 0.99, lambda 0.95, entropy 0.01.
            return cls.Config(frame_stack=4 if family == "ALE" else 1, n_envs=8, n_steps=128, batch_size=256,
                              n_epochs=4, lr=2.5e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.1, ent_coef=0.01,
                              max_grad_norm=0.5)
        raise ValueError(f"no {cls.__name__} preset for env family {family!r}")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: PPOConfig, device: torch.device) -> None:
        super().__init__(obs_shape, n_actions, config, device, self.make_network(tuple(obs_shape), n_actions, config))

    @staticmethod
    def make_network(obs_shape: tuple[int, ...], n_actions: int, config: Any) -> Any:
        return FeedForwardActorCritic(obs_shape, n_actions, config)

    def loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """:func:`ppo_loss` on a minibatch from :meth:`~ActorCriticAgent.minibatches`."""
        c = self.config
        logits, values = self.evaluate_batch(batch)
        flat = {k: batch[k].flatten() for k in ("actions", "log_probs", "values", "advantages", "returns")}
        return ppo_loss(logits, values, flat["actions"], flat["log_probs"], flat["values"], flat["advantages"],
                        flat["returns"], clip_range=self.clip_range, clip_range_vf=c.clip_range_vf,
                        normalize=c.normalize_advantage, vf_coef=c.vf_coef, ent_coef=c.ent_coef)


class A2C(PPO):
    """Advantage actor-critic (Mnih et al. 2016): PPO's update with one epoch over one minibatch."""

    @classmethod
    def preset(cls, family: str) -> PPOConfig:
        if family in ("gym", "popgym"):
            # RL-Zoo's a2c.yml for CartPole-v1 (8 envs, no entropy bonus) on SB3's A2C defaults: 5 steps, lr 7e-4
            # constant, RMSprop (alpha 0.99, eps 1e-5), gamma 0.99, lambda 1 (plain n-step returns), no
            # advantage normalisation, gradient norm 0.5.
            return PPOConfig(n_envs=8, n_steps=5, batch_size=40, n_epochs=1, lr=7e-4, lr_schedule="constant",
                             optimizer="rmsprop", gamma=0.99, gae_lambda=1.0, clip_range=0.0,
                             clip_schedule="constant", normalize_advantage=False, ent_coef=0.0)
        if family in ("MinAtar", "ALE"):
            return PPOConfig(frame_stack=4 if family == "ALE" else 1, n_envs=16, n_steps=5, batch_size=80,
                             n_epochs=1, lr=7e-4, lr_schedule="constant", optimizer="rmsprop", gamma=0.99,
                             gae_lambda=1.0, clip_range=0.0, clip_schedule="constant", normalize_advantage=False,
                             ent_coef=0.01)
        raise ValueError(f"no A2C preset for env family {family!r}")

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: PPOConfig, device: torch.device) -> None:
        if config.n_epochs != 1 or config.batch_size < config.n_envs * config.n_steps:
            raise ValueError(f"A2C takes one gradient step per rollout: need n_epochs = 1 and batch_size >= "
                             f"n_envs * n_steps = {config.n_envs * config.n_steps}; got {config.n_epochs} and "
                             f"{config.batch_size} (for more, use --algo ppo)")
        super().__init__(obs_shape, n_actions, config, device)


class PPOLSTM(PPO):
    """Recurrent PPO: an LSTM cell carries the history (RL-Zoo's ``ppo_lstm`` settings for CartPoleNoVel)."""

    Config = PPOLSTMConfig
    recurrent = True

    @staticmethod
    def make_network(obs_shape: tuple[int, ...], n_actions: int, config: Any) -> Any:
        return RecurrentActorCritic(obs_shape, n_actions, config)


class _AttentionMaps:
    """For agents whose network's ``step`` can return attention weights by lag (for :mod:`companion.viz`)."""

    def act_with_attention(self, obs: np.ndarray, state: Any, epsilon: float,
                           rng: np.random.Generator) -> tuple[int, Any, np.ndarray]:
        """:meth:`act`, also returning where this step looked: each layer's weights by lag,
        ``(num_layers, H, K)``; ``[..., k]`` is the weight on the observation ``k`` steps back."""
        with self.inference():
            logits, _, (state, weights) = self.net.step(self._obs(obs)[None], state, need_weights=True)
        action = int(rng.integers(self.n_actions)) if rng.random() < epsilon else int(logits[0].argmax())
        return action, state, weights[0].cpu().numpy()


class PPOAttention(_AttentionMaps, PPO):
    """PPO whose torso attends over the last ``context`` steps; ``attend="critic"`` for the critic only."""

    Config = PPOAttentionConfig
    recurrent = True

    @staticmethod
    def make_network(obs_shape: tuple[int, ...], n_actions: int, config: Any) -> Any:
        return AttentionActorCritic(obs_shape, n_actions, config)


class PPOMemory(_AttentionMaps, PPO):
    """PPO whose actor and critic read an episodic memory of up to ``memory`` past steps (chapter 4)."""

    Config = PPOMemoryConfig
    recurrent = True

    @staticmethod
    def make_network(obs_shape: tuple[int, ...], n_actions: int, config: Any) -> Any:
        return MemoryActorCritic(obs_shape, n_actions, config)


class PPOHierarchicalMemory(PPOMemory):
    """PPO whose actor and critic read an episodic memory by hierarchical attention (chapter 5): ``ppo-memory``
    with ``read="hierarchical"``."""

    Config = PPOHierarchicalMemoryConfig
