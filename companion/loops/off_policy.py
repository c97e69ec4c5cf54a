"""The off-policy loop: act epsilon-greedily, store transitions, learn from replay (book chapter 2).

One loop serves every Q-learning agent (:class:`~companion.agents.base.QAgent`): DQN, DRQN, DARQN and
SA-DQN. Per environment step:

1. act with epsilon annealed linearly from ``eps_start`` to ``eps_end`` over ``eps_fraction`` of the run
   (from step 0, or from ``learning_starts`` with ``anneal_after_learning_starts``, as the Lua code did);
2. store ``(o, a, r, o', terminated, truncated)`` in the agent's replay buffer (and, for an agent that
   keeps its acting state in replay, R2D2-style, the state it acted from);
3. after ``learning_starts`` steps, every ``train_freq`` steps, take ``gradient_steps`` updates (from
   uniform or prioritized replay: the agent's config picks its buffer, and its update anneals beta);
4. every ``target_update`` steps, copy the online network into the target network;
5. evaluate every ``eval_every`` steps (the harness does it);
6. at episode ends, write a row of ``metrics.csv``, reset with the next episode's seed, and checkpoint
   if one is due (or if a stop was asked for).

Checkpoints are taken at episode boundaries, where the env's whole state is its episode's seed: the
loop's state is then a few counters, a random generator and the replay buffer.
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np

from companion.agents.base import linear_schedule, schedule_step
from companion.loops.base import LoopContext, LoopResult, UpdateLog, next_multiple
from companion.utils import episode_seed

__all__ = ["run"]


def run(ctx: LoopContext) -> LoopResult:
    """Train ``ctx.agent`` off-policy until ``ctx.total_steps`` env steps (or a stop at an episode end)."""
    agent, c = ctx.agent, ctx.agent.config
    env = ctx.env_fn()
    buffer = agent.make_buffer(env.observation_space.dtype, seed=episode_seed(ctx.seed, 0, stream=2))
    explore_rng = np.random.default_rng([ctx.seed, 0xE8])
    log = UpdateLog(ctx.records)
    step = episode = 0
    if ctx.resume is not None:
        state, replay = ctx.resume
        if replay is None:
            raise FileNotFoundError(f"{ctx.records.path} has no replay.pt: cannot resume exactly")
        buffer.load_state_dict(replay)
        explore_rng.bit_generator.state = json.loads(state["explore_rng"])
        step, episode = int(state["step"]), int(state["episode"])
        log.load(json.loads(state["update_log"]))

    def save() -> None:
        ctx.checkpoint({"step": step, "episode": episode, "explore_rng": json.dumps(explore_rng.bit_generator.state),
                        "update_log": json.dumps(log.state())}, buffer.state_dict())

    eps_duration = int(c.eps_fraction * ctx.total_steps)
    recent: deque[float] = deque(maxlen=10)
    last_eval = float("nan")
    next_checkpoint = next_multiple(step, ctx.checkpoint_every)
    obs, _ = env.reset(seed=episode_seed(ctx.seed, episode))
    recurrent_state = agent.initial_state()
    episode_return, episode_length = 0.0, 0
    interrupted = False
    bar = ctx.progress
    stores_states = agent.replay_state_size > 0
    while step < ctx.total_steps:
        epsilon = linear_schedule(c.eps_start, c.eps_end, eps_duration, schedule_step(c, step))
        acted_from = recurrent_state
        action, recurrent_state = agent.act(obs, recurrent_state, epsilon, explore_rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        if stores_states:
            buffer.add_state(agent.replay_state(acted_from))
        obs = next_obs
        step += 1
        episode_return += float(reward)
        episode_length += 1
        if step > c.learning_starts and step % c.train_freq == 0:
            agent.set_step(step, ctx.total_steps)  # anneals the lr and prioritized replay's beta
            for _ in range(c.gradient_steps):
                log.add(agent.update(buffer))
        if log.due(step, step - 1):
            log.write(step)
        if step % c.target_update == 0:
            agent.sync_target()
        if step % ctx.eval_every == 0 or step == ctx.total_steps:
            last_eval = ctx.evaluate(step)
        if step % 500 == 0:
            bar.update(step - bar.n)
            if recent:
                bar.set_postfix(ret=f"{np.mean(recent):.1f}", eps=f"{epsilon:.2f}", refresh=False)
        if terminated or truncated:
            ctx.records.append("metrics", (episode, step, f"{episode_return:.6g}", episode_length))
            recent.append(episode_return)
            episode += 1
            obs, _ = env.reset(seed=episode_seed(ctx.seed, episode))
            recurrent_state = agent.initial_state()
            episode_return, episode_length = 0.0, 0
            stopping = ctx.should_stop(step)
            if stopping or step >= next_checkpoint:
                save()
                next_checkpoint = next_multiple(step, ctx.checkpoint_every)
            if stopping:
                interrupted = True
                break
    if not interrupted:
        save()  # the end of the run: a mid-episode stop, but nothing follows it
    env.close()
    return LoopResult(step, episode, interrupted, last_eval)
