"""What the harness needs from any agent (:class:`Agent`), and the parts every Q-learning agent shares
(:class:`QAgent`, the TD losses).

An agent owns its networks, its optimizer and its update rule. The harness (:mod:`companion.train`)
owns the run: config, records, evaluation, checkpoints. The loop the agent names
(:mod:`companion.loops`) owns the env, the replay buffer or rollout, and the schedule. A new algorithm
is a new file in ``companion/agents/`` and a line in :data:`companion.agents.AGENTS`, not a copy of a loop.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from companion.buffers import (
    PrioritizedReplayBuffer,
    PrioritizedSequenceReplayBuffer,
    ReplayBuffer,
    SequenceReplayBuffer,
    window_td_error,
)

__all__ = ["COMPILE_PREFIX", "Agent", "DQNRMSprop", "EnvPreset", "QAgent", "QLearningConfig", "SequenceTensors",
           "linear_schedule",
           "compile_module", "lr_scheduled", "make_optimizer", "masked_mean", "replay_loss",
           "schedule_step", "scheduled_lr", "sequence_td", "sequence_tensors", "strip_compile_prefix",
           "target_copy_ceiling", "td_loss"]

#: the prefix ``torch.compile(module)`` gives every key of its wrapper's ``state_dict``
COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A module's ``state_dict`` with :data:`COMPILE_PREFIX` removed from its keys (a copy; other dicts unchanged).

    The agents save their eager modules, whose keys carry no prefix, even with ``compile=true``; this lets a
    ``state_dict`` saved from a ``torch.compile`` wrapper (``_orig_mod.encoder.net.1.weight``) load as well."""
    if not any(isinstance(k, str) and k.startswith(COMPILE_PREFIX) for k in state):
        return state
    state = dict(state)
    consume_prefix_in_state_dict_if_present(state, COMPILE_PREFIX)
    return state


def compile_module(module: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(module)``: a wrapper that shares the module's parameters (an optimizer of the module
    steps the compiled one too) and compiles on its first call, and again for each new input shape or grad
    mode. Raises ``RuntimeError`` where this torch cannot compile (no C++ compiler, an unsupported Python)."""
    try:
        return torch.compile(module)
    except Exception as error:  # noqa: BLE001 (torch raises several kinds; the message says which)
        raise RuntimeError(f"torch.compile is unavailable here: {error}") from error


@dataclasses.dataclass
class QLearningConfig:
    """Settings shared by the Q-learning agents (DQN, DRQN, and the attention agents of later chapters).

    Steps count environment steps. ``frame_stack`` is applied by the env (the agent sees stacked
    observations); everything else is the algorithm's.
    """

    frame_stack: int = 1
    lr: float = 1e-3
    lr_end: float = 0.0  # if > 0, the learning rate anneals linearly from lr to lr_end ...
    lr_decay_steps: int = 0  # ... over this many env steps
    # if > 0, the learning rate rises linearly from 0 over this many env steps after learning_starts (a warm-up,
    # as transformers are usually trained; offered to SA-DQN, book chapter 2.3)
    lr_warmup: int = 0
    # "adam", "rmsprop_dqn" (centred RMSProp as DQN's and DARQN's Lua code: alpha 0.95, 0.01 inside the square
    # root, :class:`DQNRMSprop`) or "rmsprop_centered" (PyTorch's centred RMSprop: the 0.01 outside the root)
    optimizer: str = "adam"
    adam_eps: float = 1e-8
    gamma: float = 0.99
    batch_size: int = 64
    buffer_size: int = 100_000
    learning_starts: int = 1_000
    train_freq: int = 1  # env steps between bursts of updates
    gradient_steps: int = 1  # updates per burst
    target_update: int = 1_000  # env steps between hard copies of the online net into the target net
    double_dqn: bool = True  # van Hasselt et al. 2016
    loss: str = "huber"  # "huber" (the TD error's gradient clipped at 1, Mnih et al. 2015) or "mse"
    max_grad_norm: float = 10.0  # clip the gradient's norm; 0 = off
    grad_clamp: float = 0.0  # clamp each gradient element to [-c, c] (DARQN's original code uses 5); 0 = off
    reward_clip: float = 0.0  # clip rewards to [-c, c] in the update; 0 = off (Atari uses 1)
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.1  # fraction of the run over which epsilon decays linearly
    eval_epsilon: float = 0.0
    # The DQN/DARQN Lua code anneals epsilon (and the learning rate) from learning_starts, not from step 0.
    anneal_after_learning_starts: bool = False
    # ALE only: the probability of repeating the previous action (sticky actions). ALE v5's 0.25 follows
    # Machado et al. 2018; the 2015 papers (DQN, DRQN, DARQN) used the deterministic ALE (0) with no-op starts.
    sticky_actions: float = 0.25
    # Prioritized replay (Schaul et al. 2016; book chapter 4): samples drawn in proportion to
    # (|TD error| + priority_eps)^priority_alpha, their losses weighted by importance-sampling weights with
    # an exponent annealed linearly from priority_beta to 1 over the run. Windows (recurrent and attention
    # agents) are ranked by R2D2's priority_eta * max + (1 - priority_eta) * mean of their steps' errors.
    prioritized: bool = False
    priority_alpha: float = 0.6  # Schaul et al.'s proportional variant on Atari; 0 = uniform
    priority_beta: float = 0.4  # ... and their beta_0
    priority_eps: float = 1e-6  # keeps a transition whose TD error was 0 in play (its priority: 2.5e-4 at alpha 0.6)
    priority_eta: float = 0.9  # R2D2 (Kapturowski et al. 2019)

    def validate(self) -> None:
        if self.loss not in ("huber", "mse"):
            raise ValueError(f"loss must be 'huber' or 'mse', got {self.loss!r}")
        if self.optimizer not in ("adam", "rmsprop_dqn", "rmsprop_centered"):
            raise ValueError(f"optimizer must be 'adam', 'rmsprop_dqn' or 'rmsprop_centered', got {self.optimizer!r}")
        if not 0 <= self.sticky_actions <= 1:
            raise ValueError(f"sticky_actions must lie in [0, 1], got {self.sticky_actions}")
        if not 0 <= self.eps_end <= self.eps_start <= 1:
            raise ValueError(f"need 0 <= eps_end <= eps_start <= 1, got {self.eps_start}, {self.eps_end}")
        for name in ("batch_size", "buffer_size", "train_freq", "gradient_steps", "target_update"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_warmup < 0:
            raise ValueError(f"lr_warmup must be >= 0, got {self.lr_warmup}")
        for name in ("priority_alpha", "priority_beta", "priority_eta"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not self.priority_eps > 0:
            raise ValueError(f"priority_eps must be > 0 (a TD error of 0 would never be replayed), got "
                             f"{self.priority_eps}")


@dataclasses.dataclass(frozen=True)
class EnvPreset:
    """An agent's own settings for one env, used in place of its env family's preset (:meth:`Agent.env_preset`).

    ``settings`` are config fields, applied over the config class's defaults (not over the family preset):
    a row of a tuned table states every value it was tuned with. ``steps`` is the run's length at the ``book``
    budget (the table's source's step count); ``full`` runs twice as long, ``quick`` as the env family's
    quick runs; 0 keeps the family's lengths at every budget.
    """

    settings: Mapping[str, Any]
    steps: int = 0


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """``start`` at step 0, ``end`` from ``duration`` on, linear in between."""
    if duration <= 0:
        return end
    return end + (start - end) * max(0.0, 1.0 - step / duration)


def target_copy_ceiling(steps: Any, learning_starts: int, target_update: int, gamma: float,
                        max_reward: float = 1.0) -> np.ndarray:
    """The most the online network's Q-values can have grown by env step ``steps`` under hard target copies
    (book chapter 2.3).

    The online network regresses on ``r + gamma * Q_target(s', a')`` (with Double DQN the target network
    values an action the online network chose, which is no more than its max). If every target value is at
    most ``M`` and every reward at most ``r_max``, the regression targets are at most ``r_max + gamma * M``;
    a network that fits its targets without overshooting them, at every input the target will later read,
    is then at most that too, and the next copy hands the bound on. The target network starts as a copy of
    an untrained network, with values near 0 (in general its largest value ``M_0`` adds ``gamma^n * M_0``).
    After ``n`` copies of a trained network, the target is at most ``r_max (1 - gamma^n) / (1 - gamma)``,
    and the online network, regressing towards the next copy, at most one term more::

        Q_online <= r_max * (1 + gamma + ... + gamma^n) = r_max * (1 - gamma^(n+1)) / (1 - gamma)

    The off-policy loop (:mod:`companion.loops.off_policy`) updates after ``learning_starts`` and copies
    after the updates of every step that is a multiple of ``target_update``; at step ``s`` (after its
    updates, before its copy) ``n`` counts the multiples of ``target_update`` in ``(learning_starts, s)``.
    Before learning starts the ceiling is 0. It bounds every value, so a mean of values (the ``q`` that the
    agents log) lies below it; it limits how fast values can rise and is not a prediction, and approximation
    (generalisation, Adam's momentum) can overshoot it a little.

    Args:
        steps: env steps, a number or an array.
        max_reward: the largest reward of one step (CartPole's 1); for tasks with negative rewards the
            bound says little.

    Returns:
        The ceiling at each of ``steps`` (an array of their shape).
    """
    if target_update < 1 or not 0 <= gamma < 1:
        raise ValueError(f"need target_update >= 1 and 0 <= gamma < 1, got {target_update}, {gamma}")
    steps = np.asarray(steps, float)
    copies = np.maximum(np.floor((steps - 1) / target_update) - np.floor(learning_starts / target_update), 0.0)
    ceiling = max_reward * (1.0 - gamma ** (copies + 1)) / (1.0 - gamma)
    return np.where(steps > learning_starts, ceiling, 0.0)


def schedule_step(config: QLearningConfig, step: int) -> int:
    """The step the epsilon and learning-rate schedules read: ``step``, or with
    ``anneal_after_learning_starts`` the steps since learning started (the DQN/DARQN Lua code)."""
    if config.anneal_after_learning_starts:
        return max(0, step - config.learning_starts)
    return step


def lr_scheduled(config: QLearningConfig) -> bool:
    """Whether the config's learning rate changes over the run (annealing or warm-up)."""
    return (config.lr_end > 0 and config.lr_decay_steps > 0) or config.lr_warmup > 0


def scheduled_lr(config: QLearningConfig, step: int) -> float:
    """The learning rate at env step ``step``: ``lr`` annealed linearly to ``lr_end`` over ``lr_decay_steps``
    (if both are set; from step 0 or from ``learning_starts``, :func:`schedule_step`), times the warm-up factor
    ``min(1, (step - learning_starts) / lr_warmup)`` if ``lr_warmup`` is set."""
    lr = config.lr
    if config.lr_end > 0 and config.lr_decay_steps > 0:
        lr = linear_schedule(config.lr, config.lr_end, config.lr_decay_steps, schedule_step(config, step))
    if config.lr_warmup > 0:
        lr *= min(1.0, max(0, step - config.learning_starts) / config.lr_warmup)
    return lr


class Agent(ABC):
    """What the harness (:mod:`companion.train`) needs from any agent, whatever its family.

    An agent owns its networks, its optimizer and its update rule. The harness builds it, evaluates
    it, saves it and hands it to the loop named by :attr:`loop`; the loop (:mod:`companion.loops`)
    owns the env, the replay buffer or rollout, and the schedule. Q-learning's parts (replay, target
    copies, exploration) live in :class:`QAgent`; actor-critic's (rollouts, log-probabilities, values)
    in :class:`companion.agents.actor_critic.ActorCriticAgent`. Observations arrive as numpy arrays of
    one env, unbatched.
    """

    #: the config dataclass of this agent
    Config: ClassVar[type]
    #: the training loop this agent learns in: ``"off_policy"`` (replay) or ``"on_policy"`` (rollouts)
    loop: ClassVar[str]
    #: whether :meth:`act` carries a state from step to step (a recurrent state, a context of observations)
    recurrent: ClassVar[bool] = False
    #: this class's own presets for single envs, by env id (:meth:`~companion.agents.base.Agent.env_preset`);
    #: most agents have none
    ENV_PRESETS: ClassVar[Mapping[str, EnvPreset]] = {}

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: Any, device: torch.device) -> None:
        self.obs_shape, self.n_actions, self.config, self.device = tuple(obs_shape), n_actions, config, device
        #: set by :meth:`compile`: the next update's wall time is printed as the compile time, once
        self._compile_pending = False

    def compile(self) -> None:
        """Compile the networks the update runs with ``torch.compile`` (the run setting ``compile=true``).

        Only the update's calls go through the compiled networks; acting, evaluation and checkpoints use the
        eager modules, which share the parameters (so ``state_dict`` keys do not change). Compilation happens
        on the first update, whose wall time is printed as one line on stderr. The arithmetic is the same up to
        float rounding (fused kernels add in another order), so a compiled run's records are not byte-identical
        to an eager one's. An agent whose update cannot be compiled raises ``ValueError`` naming it.
        """
        raise ValueError(f"compile=true is not supported for {type(self).__name__}")

    def _mark_compiled(self) -> None:
        self._compile_pending = True

    @contextlib.contextmanager
    def _compile_note(self) -> Iterator[None]:
        """Around an update: after the first one following :meth:`compile`, print how long it took (the
        compilation, mostly)."""
        if not self._compile_pending:
            yield
            return
        start = time.perf_counter()
        yield
        self._compile_pending = False
        print(f"compile: {type(self).__name__}'s networks compiled by torch.compile; the first update took "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    @classmethod
    @abstractmethod
    def preset(cls, family: str) -> Any:
        """The config for an env family: ``"gym"`` (classic control), ``"popgym"``, ``"MinAtar"``, ``"ALE"``."""

    @classmethod
    def env_preset(cls, env_id: str) -> EnvPreset | None:
        """This class's own preset for ``env_id``, or ``None`` when the env family's :meth:`preset` applies.

        Read from the :attr:`ENV_PRESETS` the class itself defines, never a parent's: a subclass learns with
        another update or network (A2C and the memory variants of PPO subclass PPO), and a tuning found for one
        algorithm does not carry over to another.
        """
        return vars(cls).get("ENV_PRESETS", {}).get(env_id)

    @classmethod
    def config_for(cls, env_id: str, family: str) -> Any:
        """The config for ``env_id`` of env family ``family``: its own preset if this class has one, else the
        family's."""
        own = cls.env_preset(env_id)
        return cls.Config(**own.settings) if own is not None else cls.preset(family)

    @classmethod  # noqa: B027 (an optional hook: most agents need nothing)
    def fit_to_steps(cls, config: Any, total_steps: int) -> None:
        """Shrink sizes that only make sense for long runs (the quick budget calls this); never the algorithm."""

    def initial_state(self) -> Any:
        """The state :meth:`act` starts an episode from (``None`` for feed-forward agents)."""
        return None

    @property
    def replay_state_size(self) -> int:
        """How many floats of the acting state replay keeps per transition (R2D2's stored state); 0: none."""
        return 0

    def replay_state(self, state: Any) -> np.ndarray:
        """The acting state :meth:`act` was given (``None`` at an episode start) as ``(replay_state_size,)``
        floats, for replay to keep (only called when :attr:`replay_state_size` is positive)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no state in replay")

    @abstractmethod
    def act(self, obs: np.ndarray, state: Any, epsilon: float, rng: np.random.Generator) -> tuple[int, Any]:
        """The agent's action for one observation; returns ``(action, next_state)``.

        With probability ``epsilon`` the action is replaced by a uniformly random one, drawn from ``rng``.
        For every agent this is the evaluation protocol's noise (the Atari papers evaluate at 0.05);
        Q-learning agents also explore with it during training.
        """

    @abstractmethod
    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """The networks and optimizer, by name, for checkpoints."""

    @abstractmethod
    def policy_network(self) -> nn.Module:
        """The network that acts: saved as ``policy.pt`` at the end of a run, and counted by
        :meth:`num_parameters`."""

    def state_dict(self) -> dict[str, Any]:
        return {name: module.state_dict() for name, module in self.modules().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` gave; module keys saved from a ``torch.compile`` wrapper (``_orig_mod.``)
        load too (:func:`strip_compile_prefix`)."""
        for name, module in self.modules().items():
            saved = state[name]
            module.load_state_dict(strip_compile_prefix(saved) if isinstance(module, nn.Module) else saved)

    def policy_state_dict(self) -> dict[str, Any]:
        """The acting network's weights, as written to ``policy.pt``."""
        return self.policy_network().state_dict()

    def load_policy_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``policy.pt`` (what a fresh clone has: no optimizer, no target network)."""
        self.policy_network().load_state_dict(strip_compile_prefix(state))

    def num_parameters(self) -> int:
        """Trainable parameters of the acting network."""
        return sum(p.numel() for p in self.policy_network().parameters() if p.requires_grad)

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """The acting network in eval mode, without autograd, back in training mode afterwards: for acting
        and for reading attention weights (dropout off; DARQN-hard samples instead of mixing)."""
        network = self.policy_network()
        network.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            network.train()


class DQNRMSprop(torch.optim.Optimizer):
    """Centred RMSProp as the DQN (Mnih et al. 2015) and DARQN (Sorokin et al. 2015) Lua code computes it::

        g  <- alpha g  + (1 - alpha) grad          (running mean of the gradient)
        g2 <- alpha g2 + (1 - alpha) grad^2        (running mean of its square)
        w  <- w - lr * grad / sqrt(g2 - g^2 + eps)

    PyTorch's ``RMSprop(centered=True)`` puts ``eps`` outside the root, ``sqrt(g2 - g^2) + eps``: with the
    papers' eps = 0.01 the two differ most where the gradient's variance is small (there the Lua step is at
    most ``lr * grad / 0.1``, PyTorch's ``lr * grad / 0.01``).
    """

    def __init__(self, params: Any, lr: float = 2.5e-4, alpha: float = 0.95, eps: float = 0.01) -> None:
        if lr < 0 or not 0 <= alpha < 1 or eps <= 0:
            raise ValueError(f"need lr >= 0, 0 <= alpha < 1, eps > 0; got {lr}, {alpha}, {eps}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, lr = group["alpha"], group["eps"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["g"] = torch.zeros_like(p)
                    state["g2"] = torch.zeros_like(p)
                g, g2 = state["g"], state["g2"]
                g.mul_(alpha).add_(p.grad, alpha=1 - alpha)
                g2.mul_(alpha).addcmul_(p.grad, p.grad, value=1 - alpha)
                p.addcdiv_(p.grad, (g2 - g * g + eps).sqrt(), value=-lr)
        return loss


def make_optimizer(params: Any, config: QLearningConfig) -> torch.optim.Optimizer:
    """Adam (fused where this torch supports it: measured 5x faster steps on 1.7M parameters), or centred
    RMSProp with DQN's constants (squared-gradient decay 0.95, epsilon 0.01): :class:`DQNRMSprop` (the
    papers' code) or PyTorch's (``rmsprop_centered``, epsilon outside the root)."""
    if config.optimizer == "rmsprop_dqn":
        return DQNRMSprop(params, lr=config.lr, alpha=0.95, eps=0.01)
    if config.optimizer == "rmsprop_centered":
        return torch.optim.RMSprop(params, lr=config.lr, alpha=0.95, eps=0.01, centered=True)
    try:
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps)


def td_loss(q_taken: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Elementwise TD loss: Huber (``smooth_l1``, beta 1) or squared error."""
    if kind == "huber":
        return nn.functional.smooth_l1_loss(q_taken, target, reduction="none")
    return nn.functional.mse_loss(q_taken, target, reduction="none")


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the positions where ``weights`` (same shape, 0 or 1) is 1."""
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def replay_loss(losses: torch.Tensor, q_taken: torch.Tensor, target: torch.Tensor, batch: Any,
                config: QLearningConfig, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A batch's loss from its elementwise TD losses: the one place where prioritized replay meets a loss.

    Uniform replay (``batch.weights`` is None): the mean of ``losses``, over the positions where ``mask``
    is 1 if there is one. Prioritized replay: each sample's losses are first multiplied by its
    importance-sampling weight (Schaul et al. 2016, Algorithm 1), and each sample's TD error is left on
    the batch, ``batch.td_errors`` ``(B,)``, for :meth:`QAgent.update` to hand to the buffer's
    ``update_priorities``: ``|target - q_taken|``, or for a window R2D2's mix of its steps' errors where
    ``mask`` is 1 (:func:`~companion.buffers.window_td_error`, with ``config.priority_eta``).

    Args:
        losses, q_taken, target: ``(B,)`` for transitions, ``(B, T)`` for windows.
        mask: ``(B, T)``, 1 where the loss applies (windows only).
    """
    if batch is None or batch.weights is None:
        return losses.mean() if mask is None else masked_mean(losses, mask)
    weights = torch.as_tensor(batch.weights, device=losses.device)  # (B,)
    td_errors = (target - q_taken).detach().abs().cpu().numpy()
    if mask is None:
        batch.td_errors = td_errors
        return (losses * weights).mean()
    batch.td_errors = window_td_error(td_errors, mask.detach().cpu().numpy() > 0, config.priority_eta)
    return masked_mean(losses * weights[:, None], mask)


class QAgent(Agent):
    """A Q-learning agent: an online network ``q``, its target copy, Adam, and a TD ``loss`` to define.

    DQN, DRQN and the attention agents of later chapters differ in their network and their loss on a
    sampled batch; the update step, the target copy and the checkpoint contents are shared here. It
    learns in the off-policy loop (:mod:`companion.loops.off_policy`): epsilon-greedy acting, replay,
    a burst of updates every ``train_freq`` steps, and a target copy every ``target_update`` steps.
    """

    loop = "off_policy"
    #: whether this agent learns from windows of ``burn_in + seq_len`` consecutive transitions (recurrent and
    #: attention agents, whose configs have both) rather than from single transitions
    sequence_replay: ClassVar[bool] = False

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, config: QLearningConfig, device: torch.device,
                 network: nn.Module) -> None:
        super().__init__(obs_shape, n_actions, config, device)
        config.validate()
        self.q = network.to(device)
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        #: the online and target networks as :meth:`loss` calls them: the modules, or with :meth:`compile` their
        #: ``torch.compile`` wrappers (same parameters); acting and checkpoints use ``q`` and ``target``
        self.q_fn: Callable[..., Any] = self.q
        self.target_fn: Callable[..., Any] = self.target
        self.optimizer = make_optimizer(self.q.parameters(), config)
        #: prioritized replay's importance-sampling exponent now (:meth:`set_step` anneals it)
        self.beta = config.priority_beta

    @classmethod
    def fit_to_steps(cls, config: QLearningConfig, total_steps: int) -> None:
        """Learning starts, replay and target copies scaled down to a short run, so that it learns a little."""
        config.learning_starts = min(config.learning_starts, total_steps // 4)
        config.buffer_size = min(config.buffer_size, max(total_steps, 1_000))
        config.target_update = min(config.target_update, max(total_steps // 10, 1))

    def make_buffer(self, obs_dtype: np.dtype, seed: int) -> ReplayBuffer:
        """The replay this agent learns from: transitions, or windows (:attr:`sequence_replay`), sampled
        uniformly or, with ``config.prioritized``, by priority."""
        c = self.config
        kwargs: dict[str, Any] = {"seed": seed}
        if self.sequence_replay:
            kwargs["seq_len"] = c.burn_in + c.seq_len
            if self.replay_state_size:
                kwargs["state_size"] = self.replay_state_size
        if not c.prioritized:
            cls = SequenceReplayBuffer if self.sequence_replay else ReplayBuffer
        else:
            cls = PrioritizedSequenceReplayBuffer if self.sequence_replay else PrioritizedReplayBuffer
            kwargs.update(alpha=c.priority_alpha, eps=c.priority_eps)
        return cls(c.buffer_size, self.obs_shape, obs_dtype, **kwargs)

    @abstractmethod
    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The TD loss on a batch from this agent's buffer, and scalars to log (through ``q_fn`` and
        ``target_fn``)."""

    def compile(self) -> None:
        """``torch.compile`` the online and target networks for :meth:`loss` (:meth:`Agent.compile`)."""
        self.q_fn, self.target_fn = compile_module(self.q), compile_module(self.target)
        self._mark_compiled()

    def set_step(self, step: int, total_steps: int = 0) -> None:
        """Told the env step (and the run's length) before each burst of updates: anneals the learning rate
        (and warms it up) if the config says so, and with prioritized replay the IS exponent :attr:`beta`, linearly from
        ``priority_beta`` at step 0 to 1 at ``total_steps`` (Schaul et al. 2016; 0: beta stays as it is)."""
        c = self.config
        if lr_scheduled(c):
            for group in self.optimizer.param_groups:
                group["lr"] = scheduled_lr(c, step)
        if c.prioritized and total_steps > 0:
            self.beta = linear_schedule(c.priority_beta, 1.0, total_steps, step)

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        """One gradient step on a sample from ``buffer``; returns scalars to log.

        With prioritized replay the sample comes with importance-sampling weights (at :attr:`beta`), the
        loss weighs by them and leaves each sample's TD error on the batch (:func:`replay_loss`), and the
        sampled priorities are set from those errors after the step.
        """
        c = self.config
        batch = buffer.sample(c.batch_size, beta=self.beta) if c.prioritized else buffer.sample(c.batch_size)
        with self._compile_note():
            loss, info = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clamp:
                nn.utils.clip_grad_value_(self.q.parameters(), c.grad_clamp)
            if c.max_grad_norm:
                nn.utils.clip_grad_norm_(self.q.parameters(), c.max_grad_norm)
            self.optimizer.step()
        if c.prioritized:
            if batch.td_errors is None:
                raise RuntimeError(f"{type(self).__name__}.loss left no TD errors on the batch: reduce its "
                                   f"losses with replay_loss")
            buffer.update_priorities(batch.indices, batch.td_errors)  # type: ignore[attr-defined]
            info = {**info, "beta": self.beta}
        return {"loss": loss.item(), **info}

    def sync_target(self) -> None:
        """Copy the online network into the target network."""
        self.target.load_state_dict(self.q.state_dict())

    def policy_network(self) -> nn.Module:
        return self.q

    def load_policy_state_dict(self, state: dict[str, Any]) -> None:
        state = strip_compile_prefix(state)
        self.q.load_state_dict(state)
        self.target.load_state_dict(state)

    def modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        return {"q": self.q, "target": self.target, "optimizer": self.optimizer}


@dataclasses.dataclass
class SequenceTensors:
    """A sequence batch as tensors, ready for a recurrent Q-network.

    ``inputs`` is ``[o_0, o_1', ..., o_T']`` ``(B, T+1, ...)``: the network's output at position ``t``
    values ``o_t`` for ``t < T`` and ``o_t'`` (the next observation of step ``t - 1``) for ``t >= 1``, from
    a state that has seen the window up to it. ``weights`` ``(B, T)`` is 1 where the loss applies: valid
    (before the window's episode ended) and past the burn-in. ``batch`` is the sequence batch they came
    from (prioritized replay reads its importance-sampling weights and leaves TD errors on it).
    """

    inputs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor  # clipped if the config says so
    terminated: torch.Tensor  # float 0/1
    weights: torch.Tensor
    batch: Any = None

    def masked_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` ``(B, T)`` over the positions where the loss applies."""
        return masked_mean(values, self.weights)


def sequence_tensors(batch: Any, config: QLearningConfig, device: torch.device, burn_in: int) -> SequenceTensors:
    """Turn a :class:`~companion.buffers.SequenceBatch` into :class:`SequenceTensors`."""

    def to(x: Any) -> torch.Tensor:
        return torch.as_tensor(x, device=device)

    rewards = to(batch.rewards)
    if config.reward_clip:
        rewards = rewards.clamp(-config.reward_clip, config.reward_clip)
    weights = to(batch.mask).float()  # (B, T)
    weights[:, :burn_in] = 0.0
    inputs = torch.cat([to(batch.obs[:, :1]), to(batch.next_obs)], dim=1)  # (B, T+1, ...)
    return SequenceTensors(inputs, to(batch.actions), rewards, to(batch.terminated).float(), weights, batch)


def sequence_td(q_online: torch.Tensor, next_online: torch.Tensor, next_target: torch.Tensor, seq: SequenceTensors,
                config: QLearningConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TD loss at every position of a window, averaged where it applies (weighted per window by
    prioritized replay: :func:`replay_loss`).

    For position ``t`` of a window of ``T`` transitions the target is (Double DQN, van Hasselt et al. 2016)::

        y_t = r_t + gamma * (1 - terminated_t) * Q_target(next_t, argmax_a Q_online(next_t, a))

    with ``stop_gradient(y_t)``: only ``Q_online(o_t, a_t)`` learns. A recurrent network reads ``next_t``
    from its state after ``o_0 .. o_t`` (``next_online = q_all[:, 1:]``); a network with one position per
    observation may read it over the window shifted by one (SA-DQN: :meth:`~companion.agents.sadqn.SADQN.loss`).

    Args:
        q_online: the online network's Q-values at the window's observations, ``(B, T, A)``.
        next_online: the online network's Q-values at the next observations, ``(B, T, A)`` (for the
            Double-DQN argmax; no gradient is taken through it).
        next_target: the target network's Q-values at the next observations, ``(B, T, A)``.

    Returns:
        ``(loss, target, q_taken)``; ``target`` and ``q_taken`` are ``(B, T)``.
    """
    q_taken = q_online.gather(2, seq.actions[..., None]).squeeze(2)  # (B, T)
    with torch.no_grad():
        if config.double_dqn:  # the online net chooses, the target net evaluates
            next_value = next_target.gather(2, next_online.argmax(2, keepdim=True)).squeeze(2)
        else:
            next_value = next_target.max(2).values
        target = seq.rewards + config.gamma * (1.0 - seq.terminated) * next_value  # (B, T)
    losses = td_loss(q_taken, target, config.loss)  # (B, T)
    return replay_loss(losses, q_taken, target, seq.batch, config, seq.weights), target, q_taken
