"""The on-policy loop: rollouts over vector envs, GAE, then the agent's update (book chapter 3).

One loop serves every actor-critic agent (:class:`~companion.agents.actor_critic.ActorCriticAgent`):
PPO, A2C and their recurrent and attention variants. Per rollout:

1. ``n_steps`` times: sample actions for the ``n_envs`` envs from the policy (the agent carries each
   env's state), step them, and store ``(o, a, log pi(a), V, r, done, episode start)``; where a time
   limit cut an episode, add ``gamma * V(final obs)`` to its last reward (truncation is not termination);
   reset the envs whose episode ended, each with its next episode's seed, and their state;
2. bootstrap with ``V`` of the observation after the last step and compute GAE (:func:`~companion.buffers.gae`);
3. let the agent update (PPO's epochs of minibatches); log its scalars, and the critic's quality
   against the discounted returns that finished episodes really got;
4. evaluate if due (the harness does it), and checkpoint if due or if a stop was asked for.

The envs are gymnasium vector envs with autoreset off: the loop resets a finished sub-env itself, with
a seed from the run's seed, the env's index and its episode count. A checkpoint at a rollout boundary
keeps, for each env, its episode's seed and the actions taken so far; resuming replays them
(:class:`~companion.envs.EpisodeReplay`), so the envs are where they were and the records continue as
if the run had not stopped.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from companion.buffers import Rollout
from companion.envs import EpisodeReplay
from companion.loops.base import LoopContext, LoopResult, UpdateLog, next_multiple
from companion.utils import episode_seed

__all__ = ["CriticTracker", "discounted_returns", "make_vector_env", "run"]

ENV_STREAM = 10  # episode seeds of sub-env i come from stream ENV_STREAM + i


def _replayable(env_fn: Callable[[], gym.Env], index: int) -> gym.Env:
    return EpisodeReplay(env_fn(), index)


def make_vector_env(env_fn: Callable[[], gym.Env], n_envs: int, kind: str = "sync") -> gym.vector.VectorEnv:
    """``n_envs`` copies of ``env_fn()`` in a gymnasium vector env with autoreset off (the loop resets)."""
    fns = [functools.partial(_replayable, env_fn, i) for i in range(n_envs)]
    cls = gym.vector.SyncVectorEnv if kind == "sync" else gym.vector.AsyncVectorEnv
    return cls(fns, autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def discounted_returns(rewards: list[float], gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """``G_t = r_t + gamma * G_{t+1}`` for one episode, with ``G_T = bootstrap`` (0 if it terminated)."""
    returns = np.zeros(len(rewards))
    following = bootstrap
    for t in range(len(rewards) - 1, -1, -1):
        following = rewards[t] + gamma * following
        returns[t] = following
    return returns


class CriticTracker:
    """The critic against what really happened: at each finished episode, the values ``V(h_t)`` the agent
    predicted while acting against the discounted returns-to-go the episode then got (bootstrapped with
    ``V`` of the final observation if a time limit cut it). Summed over a block of steps, it gives the
    root-mean-square value error and the explained variance ``1 - Var(G - V) / Var(G)``."""

    KEYS = ("n", "err", "err2", "ret", "ret2")

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.sums = dict.fromkeys(self.KEYS, 0.0)

    def add_episode(self, values: list[float], rewards: list[float], bootstrap: float) -> None:
        returns = discounted_returns(rewards, self.gamma, bootstrap)
        errors = returns - np.asarray(values)
        for key, total in zip(self.KEYS, (len(returns), errors.sum(), (errors**2).sum(), returns.sum(),
                                          (returns**2).sum()), strict=True):
            self.sums[key] += float(total)

    def flush(self) -> dict[str, float]:
        """``value_rmse_mc`` and ``explained_variance_mc`` of the block (nan if no episode ended), then reset."""
        s, nan = self.sums, float("nan")
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        if not s["n"]:
            return {"value_rmse_mc": nan, "explained_variance_mc": nan}
        var_err = s["err2"] / s["n"] - (s["err"] / s["n"]) ** 2
        var_ret = s["ret2"] / s["n"] - (s["ret"] / s["n"]) ** 2
        return {"value_rmse_mc": (s["err2"] / s["n"]) ** 0.5,
                "explained_variance_mc": 1 - var_err / var_ret if var_ret > 1e-12 else nan}


def run(ctx: LoopContext) -> LoopResult:
    """Train ``ctx.agent`` on-policy until ``ctx.total_steps`` env steps (or a stop at a rollout end)."""
    agent, c = ctx.agent, ctx.agent.config
    n, steps_per_env = c.n_envs, c.n_steps
    envs = make_vector_env(ctx.env_fn, n, c.vector)
    space = envs.single_observation_space
    obs_dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
    prefix = agent.history_prefix
    log, tracker = UpdateLog(ctx.records), CriticTracker(c.gamma)

    # Everything below is the loop's state; a checkpoint saves it and a resume restores it.
    step = episodes = 0
    env_episode = [0] * n  # episodes each env has started
    actions: list[list[int]] = [[] for _ in range(n)]  # this episode's actions, to replay on resume
    values: list[list[float]] = [[] for _ in range(n)]  # and the critic's values, rewards and return
    rewards: list[list[float]] = [[] for _ in range(n)]
    returns, lengths = [0.0] * n, [0] * n
    starts = np.ones(n, dtype=bool)  # the next observation of each env is the first of its episode
    state = agent.rollout_state(n)
    prefix_obs = torch.zeros((prefix, n, *space.shape), dtype=obs_dtype, device=agent.device)
    prefix_starts = torch.ones((prefix, n), dtype=torch.bool, device=agent.device)
    if ctx.resume is not None:
        saved = ctx.resume[0]
        step, episodes, env_episode = int(saved["step"]), int(saved["episodes"]), list(saved["env_episode"])
        actions, values, rewards = saved["actions"], saved["values"], saved["rewards"]
        returns, lengths, starts = list(saved["returns"]), list(saved["lengths"]), np.array(saved["starts"])
        state, prefix_obs, prefix_starts = (agent.state_from_saved(saved["agent_state"]), saved["prefix_obs"],
                                            saved["prefix_starts"])
        tracker.sums = dict(saved["critic"])
        log.load(json.loads(saved["update_log"]))
    seeds = [episode_seed(ctx.seed, env_episode[i], stream=ENV_STREAM + i) for i in range(n)]
    obs, _ = envs.reset(seed=seeds, options={"replay": dict(enumerate(actions))})

    def save() -> None:
        ctx.checkpoint({"step": step, "episodes": episodes, "env_episode": env_episode, "actions": actions,
                        "values": values, "rewards": rewards, "returns": returns, "lengths": lengths,
                        "starts": starts.tolist(), "agent_state": agent.state_to_save(state), "prefix_obs": prefix_obs,
                        "prefix_starts": prefix_starts, "critic": tracker.sums,
                        "update_log": json.dumps(log.state())}, None)

    recent: deque[float] = deque(maxlen=10)
    last_eval = float("nan")
    next_eval, next_checkpoint = next_multiple(step, ctx.eval_every), next_multiple(step, ctx.checkpoint_every)
    interrupted = False
    while step < ctx.total_steps:
        rollout = Rollout.empty(steps_per_env, n, space.shape, obs_dtype, agent.device)
        rollout.initial_state, rollout.prefix_obs, rollout.prefix_starts = state, prefix_obs, prefix_starts
        for t in range(steps_per_env):
            action, log_prob, value, next_state = agent.step(obs, state)
            next_obs, reward, terminated, truncated, _ = envs.step(action)
            done = terminated | truncated
            learn_reward = torch.as_tensor(reward, dtype=torch.float32, device=agent.device)
            final_value = np.zeros(n)
            cut = np.flatnonzero(truncated & ~terminated)
            if len(cut):  # a time limit is not a terminal state: bootstrap from V(final observation)
                final_value[cut] = agent.value(next_obs[cut], agent.select_state(next_state, cut)).cpu().numpy()
                learn_reward[cut] += c.gamma * torch.as_tensor(final_value[cut], dtype=torch.float32,
                                                               device=agent.device)
            rollout.obs[t] = torch.as_tensor(obs, device=agent.device)
            rollout.actions[t] = torch.as_tensor(action, device=agent.device)
            rollout.log_probs[t], rollout.values[t], rollout.rewards[t] = log_prob, value, learn_reward
            rollout.dones[t] = torch.as_tensor(done, device=agent.device)
            rollout.episode_starts[t] = torch.as_tensor(starts, device=agent.device)
            step += n
            for i in range(n):
                actions[i].append(int(action[i]))
                values[i].append(float(value[i]))
                rewards[i].append(float(reward[i]))
                returns[i] += float(reward[i])
                lengths[i] += 1
                if done[i]:
                    ctx.records.append("metrics", (episodes, step, f"{returns[i]:.6g}", lengths[i]))
                    tracker.add_episode(values[i], rewards[i], float(final_value[i]))
                    recent.append(returns[i])
                    episodes += 1
                    env_episode[i] += 1
                    actions[i], values[i], rewards[i], returns[i], lengths[i] = [], [], [], 0.0, 0
            if done.any():
                seeds = [episode_seed(ctx.seed, env_episode[i], stream=ENV_STREAM + i) if done[i] else None
                         for i in range(n)]
                next_obs, _ = envs.reset(seed=seeds, options={"reset_mask": done.copy()})
                next_state = agent.reset_state(next_state, done)
            obs, state, starts = next_obs, next_state, done
        rollout.next_value = agent.value(obs, state)
        rollout.compute_advantages(c.gamma, c.gae_lambda)
        agent.set_progress(max(0.0, 1.0 - step / ctx.total_steps))
        log.add(agent.update(rollout))
        if log.due(step, step - n * steps_per_env):
            log.write(step, tracker.flush())
        if prefix:  # the steps an attention window reaches back to, before the next rollout
            prefix_obs = torch.cat([prefix_obs, rollout.obs])[-prefix:]
            prefix_starts = torch.cat([prefix_starts, rollout.episode_starts])[-prefix:]
            state = agent.refresh_state(state, prefix_obs, prefix_starts)  # cached keys under the new parameters
        if step >= next_eval or step >= ctx.total_steps:
            last_eval = ctx.evaluate(step)
            next_eval = next_multiple(step, ctx.eval_every)
        ctx.progress.update(step - ctx.progress.n)
        if recent:
            ctx.progress.set_postfix(ret=f"{np.mean(recent):.1f}", refresh=False)
        stopping = ctx.should_stop(step)
        if stopping or step >= next_checkpoint or step >= ctx.total_steps:
            save()
            next_checkpoint = next_multiple(step, ctx.checkpoint_every)
        if stopping and step < ctx.total_steps:
            interrupted = True
            break
    envs.close()
    return LoopResult(step, episodes, interrupted, last_eval)
