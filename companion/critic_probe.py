"""A controlled probe of critics under partial observability: what a critic reads decides what it can predict
(book chapter 3).

**The claim.** In a POMDP the return from step ``t`` depends on the hidden state, which the current observation
``o_t`` does not pin down, so in general ``E[G_t | o_t] != E[G_t | h_t]``, where ``h_t = (o_0, a_0, ..., o_t)``
is the history. A critic ``V(o_t)`` can at best learn the first, a critic ``V(h_t)`` (an LSTM, or attention
over the last ``K`` steps) the second, the better predictor of ``G_t``. (Baisero & Amato 2022, "Unbiased
asymmetric reinforcement learning under partial observability", prove the related result for critics of the
privileged state: they bias the policy gradient, while critics of the history, ``V(h)`` or ``V(h, s)``, do not.)

**Why a probe.** PPO runs with different torsos compare critics of *different* policies, each trained on its
own data. Here one fixed behaviour policy makes one data set, and critics that differ only in what they read
are fitted by regression to the same discounted returns-to-go and scored on the same held-out episodes:

- ``"current"``: ``V(o_t)``, PPO's feed-forward critic
  (:class:`~companion.agents.actor_critic.FeedForwardActorCritic`, the ``ppo`` preset);
- ``"stack4"``: ``V(o_{t-3}, ..., o_t)``, the same network on the last 4 observations (``frame_stack=4``);
- ``"lstm"``: ``V(h_t)`` through an LSTM (:class:`~companion.agents.actor_critic.RecurrentActorCritic`, the
  ``ppo-lstm`` preset);
- ``"attention"``: ``V(h_t)`` through attention over the last 16 steps
  (:class:`~companion.agents.actor_critic.AttentionActorCritic`, the ``ppo-attn`` preset);
- and, for reference, ``"state"``: ``V(s_t)`` on the env's true state, the same network as ``"current"``.

**The task.** CartPole with both velocities hidden (``hide=(1, 3)``: the agent sees the cart position and the
pole angle). The behaviour policy (:func:`cartpole_heuristic`) reads the *true* state, velocities included,
and pushes the way the pole is falling, with a random action half of the time: it needs no training, and its
episodes end at very different times. Scores: on held-out episodes, the RMSE of ``V`` against ``G_t``, the
explained variance ``1 - Var(G - V) / Var(G)``, and the best constant's RMSE (the standard deviation of
``G_t``) for scale.

**What it finds** is stored by ``experiments/ch3_probe.py`` in ``results/ch3-probe/`` and read by the chapter. In
short: the state critic explains clearly more than the observation critic; critics of the *observation* history
gain little over ``V(o_t)``, because of CartPole's integrator: ``o_{t+1} - o_t = tau * v_t``, so ``o_0 .. o_t``
give the velocities up to ``v_{t-1}``, and ``v_t`` differs from ``v_{t-1}`` by the last push ``a_{t-1}``, which
no observation has shown yet. With the previous action in the observation (``prev_action=True``,
:class:`~companion.envs.PreviousActionReward`, so the history is the action-observation history the theory
means), the history critics move towards the state critic. (With this behaviour policy, past actions also
reveal something of the true state the policy read.) Most of the variance of ``G_t`` is not predictable even
from the state: the random half of the actions decide when the pole falls.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from companion.agents.actor_critic import ActorCriticNet, explained_variance
from companion.agents.ppo import PPO, PPOLSTM, PPOAttention
from companion.envs import make_env
from companion.value_mixing import discounted_returns

__all__ = [
    "KINDS",
    "TRAINING",
    "DataSummary",
    "Episode",
    "ProbeReport",
    "ProbeResult",
    "cartpole_heuristic",
    "collect",
    "fit_probe",
    "make_value_net",
    "masked_mse",
    "pad_episodes",
    "probe_all",
    "return_targets",
    "stack_frames",
    "summarize",
]

#: The critics the probe compares, by what they read. ``"state"`` (the env's true state, for reference) is a fifth.
KINDS: tuple[str, ...] = ("current", "stack4", "lstm", "attention")

#: Per kind, the peak learning rate and the Adam steps (8 episodes each) that fit it at :func:`probe_all`'s sizes.
#: Chosen by the held-out score: on seed 0 (with previous actions) doubling the steps moved the explained variance
#: by +0.001 ("current", 500 -> 1000), -0.014 ("stack4", 1000 -> 2000 at 3e-3), +0.002 ("lstm", 200 -> 400) and
#: +0.003 ("attention", 400 -> 600), while fewer steps or higher rates lost 0.015-0.03 ("stack4" at 500 steps,
#: "lstm" at 150 or at 1e-2, "attention" at 2e-3 or 3e-3). The feed-forward nets take more steps but are cheap;
#: the LSTM reads a batch one step at a time, and is the slowest per step.
TRAINING: dict[str, tuple[float, int]] = {"current": (1e-2, 1000), "stack4": (1e-2, 1000), "state": (1e-2, 1000),
                                          "lstm": (3e-3, 200), "attention": (1e-3, 400)}

Policy = Callable[[gym.Env, np.random.Generator], int]


# --------------------------------------------------------------------------------------------------
# Behaviour policy and data
# --------------------------------------------------------------------------------------------------
def cartpole_heuristic(epsilon: float = 0.5, *, gain: float = 0.5) -> Policy:
    """CartPole's classic hand-written controller, made noisy: push the way the pole is falling.

    It reads the env's *true* state ``(x, x_dot, theta, theta_dot)`` from ``env.unwrapped.state`` (whatever the
    agent is shown) and pushes right (action 1) when ``theta + gain * theta_dot > 0``, left otherwise; with
    probability ``epsilon`` it takes a uniformly random action instead. It ignores the cart's position, so the
    cart drifts, and without noise it still balances to CartPole-v1's time limit (500 steps, in every one of 200
    seeded episodes tried).

    The default ``epsilon = 0.5`` makes episode lengths, and so the returns-to-go ``G_t`` (``gamma = 0.98``, at
    the steps :func:`return_targets` keeps), vary widely. Measured with :func:`collect` over 300 episodes (seed 0;
    50 at ``epsilon = 0``):

    ========  ===========  ===  =======================================  =========================  ==========
    epsilon   mean length  std  5 / 25 / 50 / 75 / 95th percentiles      ends by angle / x / limit  std of G_t
    ========  ===========  ===  =======================================  =========================  ==========
    0         500          0    500 / 500 / 500 / 500 / 500              0 / 0 / 50                 0.2
    0.3       332          125  140 / 229 / 321 / 454 / 500              36 / 201 / 63              11.0
    0.4       226          123  41 / 141 / 208 / 296 / 498               113 / 172 / 15             12.7
    **0.5**   143          98   22 / 67 / 127 / 197 / 329                201 / 97 / 2               13.9
    0.6       85           56   19 / 38 / 71 / 118 / 193                 269 / 31 / 0               14.0
    1         22           10   11 / 14 / 20 / 27 / 44                   300 / 0 / 0                7.3
    ========  ===========  ===  =======================================  =========================  ==========

    At 0.5 two thirds of the episodes end with the pole down (the angle is visible, where it is going is not),
    a third with the cart off the track (its position is visible), and almost none at the time limit; lower
    rates end mostly by the cart's drift, and higher ones make episodes short (and a run cheaper) but the
    returns less predictable.

    Args:
        epsilon: the probability of a uniformly random action, in ``[0, 1]``.
        gain: the weight of the angular velocity against the angle.

    Returns:
        ``policy(env, rng) -> action``, drawing its noise from ``rng``.
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"cartpole_heuristic: epsilon must lie in [0, 1], got {epsilon}")

    def policy(env: gym.Env, rng: np.random.Generator) -> int:
        if epsilon and rng.random() < epsilon:
            return int(rng.integers(2))
        _, _, theta, theta_dot = env.unwrapped.state
        return int(theta + gain * theta_dot > 0)

    return policy


@dataclass
class Episode:
    """One episode as the agent saw it: ``obs[t]`` is ``o_t``, read before taking ``actions[t]``, which earned
    ``rewards[t]``. ``truncated``: the episode was cut by the time limit (else it terminated, or, at
    ``T = max_steps`` of :func:`collect`, was cut there)."""

    obs: np.ndarray  # (T, obs_dim) float32
    actions: np.ndarray  # (T,) int64
    rewards: np.ndarray  # (T,) float32
    truncated: bool
    states: np.ndarray | None = None  # (T, state_dim) float32: env.unwrapped.state at each step, where it has one

    def __len__(self) -> int:
        return len(self.rewards)


def collect(env_id: str, policy: Policy, episodes: int, *, seed: int, hide: Sequence[int] | None = (1, 3),
            max_steps: int = 500, prev_action: bool = False) -> list[Episode]:
    """Run ``policy`` for ``episodes`` episodes and record what the agent sees.

    Episode ``i`` is reset with its own seed and draws the policy's noise from its own generator, both from
    ``numpy.random.SeedSequence(seed).spawn(episodes)[i]``: the same ``seed`` gives the same episodes, and an
    episode does not depend on how many came before it.

    Args:
        env_id: a gymnasium id (:func:`~companion.envs.make_env`); the policy may read ``env.unwrapped``.
        policy: ``policy(env, rng) -> action``, e.g. :func:`cartpole_heuristic`.
        episodes: how many.
        seed: seeds everything.
        hide: observation dimensions the agent does not see (:class:`~companion.envs.MaskObservation`).
        max_steps: the time limit; an episode that reaches it is truncated.
        prev_action: append the previous action, one-hot, to each observation
            (:class:`~companion.envs.PreviousActionReward`; zeros at an episode's first step).

    Returns:
        ``episodes`` :class:`Episode` objects.
    """
    if episodes < 0 or max_steps < 1:
        raise ValueError(f"collect: need episodes >= 0 and max_steps >= 1, got {episodes} and {max_steps}")
    env = make_env(env_id, hide=hide, prev_action=prev_action, max_episode_steps=max_steps)
    result = []
    try:
        for child in np.random.SeedSequence(seed).spawn(episodes):
            rng = np.random.default_rng(child)
            obs, _ = env.reset(seed=int(child.generate_state(1)[0]))
            observations, actions, rewards, states = [], [], [], []
            terminated = truncated = False
            while not (terminated or truncated):
                state = getattr(env.unwrapped, "state", None)
                states.append(np.array(() if state is None else state, np.float32))
                action = policy(env, rng)
                observations.append(np.asarray(obs, np.float32))
                actions.append(action)
                obs, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
            result.append(Episode(np.stack(observations), np.asarray(actions, np.int64),
                                  np.asarray(rewards, np.float32), bool(truncated and not terminated),
                                  np.stack(states) if states[0].size else None))
    finally:
        env.close()
    return result


def summarize(episodes: Sequence[Episode]) -> DataSummary:
    """Counts and episode-length statistics of a data set."""
    lengths = np.array([len(e) for e in episodes], dtype=float)
    return DataSummary(episodes=len(episodes), steps=int(lengths.sum()), mean_length=float(lengths.mean()),
                       std_length=float(lengths.std()), truncated=sum(e.truncated for e in episodes))


@dataclass
class DataSummary:
    """Size of a data set: episodes, steps, mean and standard deviation of the episode length, truncated ones."""

    episodes: int
    steps: int
    mean_length: float
    std_length: float
    truncated: int


def stack_frames(obs: np.ndarray, k: int) -> np.ndarray:
    """The last ``k`` observations of each step, oldest first, flattened: ``(T, D)`` -> ``(T, k * D)``.

    Before the episode's start the stack is padded with the first observation, which is what
    :func:`~companion.envs.make_env` with ``frame_stack=k`` gives (gymnasium's ``FrameStackObservation``
    pads with the reset observation, not with zeros), so this critic reads what PPO's frame-stacked one does.
    """
    if k < 1:
        raise ValueError(f"stack_frames: k must be >= 1, got {k}")
    padded = np.concatenate([np.repeat(obs[:1], k - 1, axis=0), obs])  # (T + k - 1, D)
    return np.concatenate([padded[i:i + len(obs)] for i in range(k)], axis=1)


# --------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------
def return_targets(episode: Episode, gamma: float, horizon: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The returns-to-go ``G_t = sum_{i >= t} gamma^(i-t) r_i`` and which steps to fit and score.

    A terminated episode keeps every step: its ``G_t`` is exact. A truncated one (the time limit cut it; the
    policy would have gone on) keeps only the steps with at least ``horizon`` steps before the cut,
    ``t <= T - horizon``: the missing tail of their return is at most ``gamma^horizon * r_max / (1 - gamma)``,
    which for CartPole (``r = 1``) at ``gamma = 0.98``, ``horizon = 200`` is ``0.0176 * 50 = 0.88``, 1.8% of the
    largest return. The last ``horizon - 1`` steps of a truncated episode would have targets biased low by
    up to the whole tail, and no critic could tell from the observations how far the cut is.

    Args:
        episode: an episode from :func:`collect`.
        gamma: the discount.
        horizon: see above.

    Returns:
        ``(returns (T,) float64, keep (T,) bool)``.
    """
    if horizon < 1:
        raise ValueError(f"return_targets: horizon must be >= 1, got {horizon}")
    returns = discounted_returns(episode.rewards.astype(np.float64), gamma)
    keep = np.ones(len(returns), dtype=bool)
    if episode.truncated:
        keep[max(len(returns) - horizon + 1, 0):] = False
    return returns, keep


def pad_episodes(obs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                 keep: Sequence[np.ndarray]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Episodes of different lengths as one padded batch for ``net.sequence``.

    Args:
        obs: ``B`` arrays ``(T_b, D)``.
        targets: ``B`` arrays ``(T_b,)``.
        keep: ``B`` bool arrays ``(T_b,)``, the steps to fit.

    Returns:
        ``obs (B, T, D)`` float32 (zeros after an episode's end), ``starts (B, T)`` bool (True at step 0),
        ``targets (B, T)`` float32 and ``mask (B, T)`` bool (kept and not padding), with ``T = max_b T_b``.
    """
    batch, length = len(obs), max(len(o) for o in obs)
    x = torch.zeros(batch, length, obs[0].shape[-1])
    y = torch.zeros(batch, length)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b, (o, g, k) in enumerate(zip(obs, targets, keep, strict=True)):
        x[b, :len(o)] = torch.as_tensor(o, dtype=torch.float32)
        y[b, :len(o)] = torch.as_tensor(g, dtype=torch.float32)
        mask[b, :len(o)] = torch.as_tensor(k)
    starts = torch.zeros(batch, length, dtype=torch.bool)
    starts[:, 0] = True
    return x, starts, y, mask


def masked_mse(values: Tensor, targets: Tensor, mask: Tensor, count: float | None = None) -> Tensor:
    """The sum of ``(values - targets)^2`` over the steps where ``mask`` is True, divided by ``count`` (by default
    the number of those steps: their mean); all ``(B, T)``. Steps outside ``mask`` do not count, whatever they
    hold: a batch's padding, and the steps :func:`return_targets` leaves out."""
    squared = ((values - targets) ** 2)[mask]
    return squared.sum() / (len(squared) if count is None else count)


# --------------------------------------------------------------------------------------------------
# Critics
# --------------------------------------------------------------------------------------------------
def make_value_net(kind: str, obs_dim: int, n_actions: int = 2) -> tuple[ActorCriticNet, Any]:
    """The actor-critic network of ``kind`` with the ``"gym"`` preset of its PPO agent, and that config.

    ``"current"``: :class:`PPO`'s feed-forward net on ``(obs_dim,)``; ``"stack4"``: the same on
    ``(4 * obs_dim,)`` (``frame_stack=4``); ``"lstm"``: :class:`PPOLSTM`'s; ``"attention"``: :class:`PPOAttention`'s.
    Weights are drawn from torch's global generator, as the agents do.
    """
    if kind in ("current", "stack4", "state"):
        config = PPO.preset("gym")
        if kind == "stack4":
            config = dataclasses.replace(config, frame_stack=4)
        return PPO.make_network((obs_dim * config.frame_stack,), n_actions, config), config
    if kind == "lstm":
        config = PPOLSTM.preset("gym")
        return PPOLSTM.make_network((obs_dim,), n_actions, config), config
    if kind == "attention":
        config = PPOAttention.preset("gym")
        return PPOAttention.make_network((obs_dim,), n_actions, config), config
    raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}")


@dataclass
class ProbeResult:
    """One fitted critic, scored on held-out episodes (the kept steps of :func:`return_targets`)."""

    kind: str
    rmse: float  # V against G_t
    explained_variance: float  # 1 - Var(G - V) / Var(G)
    constant_rmse: float  # the best constant's RMSE: the standard deviation of G_t
    train_rmse: float  # the same RMSE on the training episodes
    losses: np.ndarray  # (steps,) training loss per Adam step, standardised targets (about 1 for a constant)
    seconds: float  # wall-clock time of fitting and scoring
    cpu_seconds: float  # the process's CPU time for the same


def _read(kind: str, episode: Episode) -> np.ndarray:
    """What a critic of ``kind`` reads at each step, before stacking: ``(T, D)``."""
    if kind != "state":
        return episode.obs
    if episode.states is None:
        raise ValueError("the 'state' critic needs episodes that recorded the env's state")
    return episode.states


def _inputs(kind: str, episodes: Sequence[Episode], mean: np.ndarray, std: np.ndarray) -> list[np.ndarray]:
    """Each episode's observations standardised per dimension (``(T, D)``), stacked for ``"stack4"``."""
    scaled = [((_read(kind, e) - mean) / std).astype(np.float32) for e in episodes]
    return [stack_frames(o, 4) for o in scaled] if kind == "stack4" else scaled


def _length_batches(lengths: np.ndarray, batch: int, generator: torch.Generator, pool: int = 8) -> list[list[int]]:
    """One epoch of minibatches of episodes of similar length (a bucket iterator): the episodes in a random
    order, cut into pools of ``pool * batch``, each pool sorted by length and cut into batches, the batches
    in a random order. A batch is padded to its longest episode, so this pads far less than random batches
    (a recurrent network's cost grows with the padded length). Each episode is in exactly one batch."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), pool * batch):
        chunk = sorted(order[start:start + pool * batch], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _predict(net: ActorCriticNet, obs: list[np.ndarray], targets: list[np.ndarray], keep: list[np.ndarray],
             batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Network outputs and targets at the kept steps of all episodes, read in batches of similar length."""
    order = np.argsort([len(o) for o in obs])
    outputs, wanted = [], []
    with torch.no_grad():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x, starts, y, mask = pad_episodes([obs[i] for i in idx], [targets[i] for i in idx],
                                              [keep[i] for i in idx])
            _, values = net.sequence(x, starts, net.initial_state(len(idx)))
            outputs.append(values[mask].double().numpy())
            wanted.append(y[mask].double().numpy())
    return np.concatenate(outputs), np.concatenate(wanted)


def fit_probe(kind: str, train_episodes: Sequence[Episode], test_episodes: Sequence[Episode], *,
              gamma: float = 0.98, horizon: int = 200, steps: int | None = None, batch_episodes: int = 8,
              lr: float | None = None, max_grad_norm: float | None = None, seed: int = 0) -> ProbeResult:
    """Fit a critic of ``kind`` to the returns-to-go of ``train_episodes``; score it on ``test_episodes``.

    The network (:func:`make_value_net`) reads whole episodes through ``net.sequence`` from
    ``net.initial_state(B)``, with ``starts`` True at step 0 only. A minibatch is ``batch_episodes`` episodes
    of similar length (``_length_batches``: every training episode once per epoch), padded to the longest
    (:func:`pad_episodes`); the loss is the squared error of ``values`` against the targets over the kept steps
    (:func:`masked_mse`), so padding and the cut steps of truncated episodes count for nothing. It is divided by
    the *average* number of kept steps per batch, not by the batch's own: a batch of short episodes weighs less,
    and an epoch's gradient is that of the mean over all training steps (dividing by each batch's count would
    weigh the steps of short episodes, whose returns are low, above the others, and bias the fit). Only the value
    head is trained; the logits are ignored.

    Targets are standardised with the kept training steps' mean ``mu`` and standard deviation ``sigma`` (the net
    fits ``(G - mu) / sigma`` and predicts ``mu + sigma * value``; on the returns themselves, up to 50, the value
    head's bias alone would need thousands of steps), and observations per dimension with the training steps'
    mean and standard deviation (CartPole's angle varies over hundredths of a radian, the position over a metre).

    Adam with the preset's ``eps`` (1e-5) and gradient clipping (0.5); the peak learning rate and the number of
    steps default to :data:`TRAINING` (the presets' 1e-3 is far too slow for the feed-forward nets), and the
    rate decays linearly to 0 over ``steps``, as the presets' ``lr_schedule="linear"``.

    Args:
        kind: one of :data:`KINDS`, or ``"state"`` (needs episodes with ``states``).
        train_episodes, test_episodes: from :func:`collect`, with the same options.
        gamma, horizon: the targets (:func:`return_targets`).
        steps: Adam steps; ``None``: :data:`TRAINING`'s.
        batch_episodes: episodes per minibatch.
        lr: the peak learning rate; ``None``: :data:`TRAINING`'s.
        max_grad_norm: gradient clipping; ``None``: the preset's (0.5); 0 turns it off.
        seed: seeds the initial weights and the minibatches (on CPU the same seed gives the same result); torch's
            global generator is left as it was.

    Returns:
        A :class:`ProbeResult`.
    """
    if kind not in (*KINDS, "state"):
        raise ValueError(f"unknown probe kind {kind!r}; choose from {', '.join(KINDS)}, state")
    if not train_episodes or not test_episodes:
        raise ValueError("fit_probe: need some training and some test episodes")
    if (steps is not None and steps < 1) or batch_episodes < 1:
        raise ValueError(f"fit_probe: need steps >= 1 and batch_episodes >= 1, got {steps} and {batch_episodes}")
    began, began_cpu = time.perf_counter(), time.process_time()
    train = [return_targets(e, gamma, horizon) for e in train_episodes]
    test = [return_targets(e, gamma, horizon) for e in test_episodes]
    every_obs = np.concatenate([_read(kind, e) for e in train_episodes])  # (N, D)
    obs_mean, obs_std = every_obs.mean(0), every_obs.std(0)
    obs_std[obs_std == 0] = 1.0
    train_obs, test_obs = (_inputs(kind, e, obs_mean, obs_std) for e in (train_episodes, test_episodes))
    kept = np.concatenate([g[k] for g, k in train])
    if kept.size == 0:
        raise ValueError("fit_probe: no training step is kept (every episode is truncated within the horizon)")
    mu, sigma = float(kept.mean()), float(kept.std()) or 1.0
    train_targets = [(g - mu) / sigma for g, _ in train]
    train_keep = [k for _, k in train]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net, config = make_value_net(kind, every_obs.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    peak = TRAINING[kind][0] if lr is None else lr
    steps = TRAINING[kind][1] if steps is None else steps
    clip = config.max_grad_norm if max_grad_norm is None else max_grad_norm
    optimizer = torch.optim.Adam(net.parameters(), lr=peak, eps=config.adam_eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    losses = np.zeros(steps)
    lengths = np.array([len(o) for o in train_obs])
    per_batch = float(np.mean([k.sum() for k in train_keep])) * min(batch_episodes, len(train_obs))
    batches: list[list[int]] = []
    net.train()
    for step in range(steps):
        if not batches:
            batches = _length_batches(lengths, batch_episodes, generator)
        idx = batches.pop()
        x, starts, y, mask = pad_episodes([train_obs[i] for i in idx], [train_targets[i] for i in idx],
                                          [train_keep[i] for i in idx])
        _, values = net.sequence(x, starts, net.initial_state(len(idx)))
        loss = masked_mse(values, y, mask, per_batch)  # not the batch's mean: every kept step weighs the same
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        schedule.step()
        losses[step] = loss.item()

    net.eval()
    eval_batch = 32
    outputs, targets = _predict(net, test_obs, [g for g, _ in test], [k for _, k in test], eval_batch)
    predicted = mu + sigma * outputs
    train_outputs, train_returns = _predict(net, train_obs, [g for g, _ in train], train_keep, eval_batch)
    train_rmse = math.sqrt(float(np.mean((mu + sigma * train_outputs - train_returns) ** 2)))
    return ProbeResult(kind=kind, rmse=math.sqrt(float(np.mean((predicted - targets) ** 2))),
                       explained_variance=explained_variance(torch.as_tensor(predicted), torch.as_tensor(targets)),
                       constant_rmse=float(targets.std()), train_rmse=train_rmse, losses=losses,
                       seconds=time.perf_counter() - began, cpu_seconds=time.process_time() - began_cpu)


@dataclass
class ProbeReport:
    """What :func:`probe_all` measured: a :class:`ProbeResult` per kind, and the two data sets' sizes."""

    results: dict[str, ProbeResult]
    train: DataSummary
    test: DataSummary
    seconds: float  # the whole probe, collection included
    cpu_seconds: float  # the process's CPU time for the same


def probe_all(env_id: str = "CartPole-v1", *, epsilon: float = 0.5, train_episodes: int = 200,
              test_episodes: int = 100, hide: Sequence[int] | None = (1, 3), max_steps: int = 500,
              prev_action: bool = False, gamma: float = 0.98, horizon: int = 200, steps: int | None = None,
              batch_episodes: int = 8, lr: float | None = None, kinds: Sequence[str] = KINDS,
              seed: int = 0) -> ProbeReport:
    """Collect one data set with :func:`cartpole_heuristic` and fit every critic of ``kinds`` on it.

    The training and test episodes come from independent seeds (both derived from ``seed``), and every kind is
    fitted with the same seed for its weights and minibatches, on the same targets, with :data:`TRAINING`'s
    rates and steps unless ``lr`` and ``steps`` are given. At the defaults (about 29,000 training and 15,000 test
    steps) a run takes about half a minute of CPU on one thread, most of it the LSTM and attention fits.
    ``experiments/ch3_probe.py`` runs it for 3 seeds, with and without the previous action, into
    ``results/ch3-probe/``.

    A critic can have the better explained variance and the worse RMSE (``lstm``, seed 1): the returns of one
    episode are strongly correlated, so the mean return differs between 200 training and 100 test episodes by
    more than the critics differ, and the RMSE counts that offset where the explained variance does not.

    Args:
        env_id: the env; the policy reads CartPole's state.
        epsilon: the behaviour policy's rate of random actions.
        train_episodes, test_episodes: the data sets' sizes.
        hide, max_steps, prev_action: what the agent sees, and the time limit (:func:`collect`).
        gamma, horizon: the targets (:func:`return_targets`).
        steps, batch_episodes, lr: training (:func:`fit_probe`).
        kinds: the critics to fit, from :data:`KINDS` and ``"state"``.
        seed: seeds the data and the fits.

    Returns:
        A :class:`ProbeReport`.
    """
    began, began_cpu = time.perf_counter(), time.process_time()
    train_seed, test_seed, fit_seed = (int(x) for x in np.random.SeedSequence(seed).generate_state(3))
    policy = cartpole_heuristic(epsilon)
    options = {"hide": hide, "max_steps": max_steps, "prev_action": prev_action}
    train = collect(env_id, policy, train_episodes, seed=train_seed, **options)
    test = collect(env_id, policy, test_episodes, seed=test_seed, **options)
    results = {kind: fit_probe(kind, train, test, gamma=gamma, horizon=horizon, steps=steps,
                               batch_episodes=batch_episodes, lr=lr, seed=fit_seed % 2**31) for kind in kinds}
    return ProbeReport(results=results, train=summarize(train), test=summarize(test),
                       seconds=time.perf_counter() - began, cpu_seconds=time.process_time() - began_cpu)
