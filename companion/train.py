"""The off-policy training loop, evaluation, and checkpoints (book chapter 2).

One loop serves every Q-learning agent in :data:`companion.agents.AGENTS`. It owns the env, the
replay buffer, the exploration schedule, evaluation and the records; the agent owns its networks and
its update. Reading order: :class:`RunConfig`, :func:`build_config`, :func:`train`, :func:`evaluate`.

Reproducibility: every episode is reset with a seed derived from the run's seed and the episode's
index, and every random generator (exploration, replay sampling, evaluation) is seeded from the run's
seed. Checkpoints are taken at episode boundaries, where the env's whole state is that seed, so a
run that is interrupted and resumed produces the same records as one that was not.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from companion.agents import AGENTS, Agent
from companion.agents.base import linear_schedule
from companion.budget import by_budget, get_budget
from companion.envs import check_discrete_actions, env_family, make_env
from companion.records import UPDATE_LOG_EVERY, RunDir, now, provenance
from companion.utils import get_device, progress, seed_everything

__all__ = ["RandomPolicy", "RunConfig", "TrainResult", "build_config", "evaluate", "load_agent", "make_run_env",
           "saved_config", "train"]


@dataclasses.dataclass
class RunConfig:
    """What to run, for how long, and how to evaluate it (the agent's settings are separate)."""

    algo: str
    env_id: str
    seed: int = 0
    budget: str = "book"
    total_steps: int = 0  # 0: by budget and env family
    eval_every: int = 0  # 0: by budget and env family
    eval_episodes: int = 0  # 0: by budget
    eval_steps: int = 0  # > 0: evaluate for this many env steps instead (Atari papers: 25k on ALE, full budget)
    hide: tuple[int, ...] = ()  # observation dimensions to hide (POMDP)
    flicker: float = 0.0  # probability of blanking an observation (POMDP)
    checkpoint_every: int = 0  # env steps between checkpoints (at the next episode end); 0: by budget
    device: str = ""  # "" = automatic
    threads: int = 1  # torch CPU threads; 0 = torch's default. Small networks train fastest on one
    # (measured on a 2-core machine: a DQN update on CartPole took 4 ms with 1 thread, 25-96 ms with 2).


# Steps per run, by env family and budget. The budget scales steps and sizes, never the algorithm.
_STEPS = {
    "gym": dict(quick=3_000, book=50_000, full=100_000),
    "popgym": dict(quick=3_000, book=50_000, full=200_000),
    "MinAtar": dict(quick=2_000, book=100_000, full=5_000_000),
    "ALE": dict(quick=1_000, book=100_000, full=5_000_000),
}
_EVAL_EVERY = {"gym": 5_000, "popgym": 5_000, "MinAtar": 10_000, "ALE": 50_000}
_EVAL_STEPS_FULL = {"ALE": 25_000}  # the full budget evaluates by steps, as Mnih et al. and Sorokin et al. do


def build_config(algo: str, env_id: str, *, seed: int = 0, budget: str | None = None, total_steps: int = 0,
                 overrides: dict[str, Any] | None = None, **run_fields: Any) -> tuple[RunConfig, Any]:
    """The run's and the agent's config: the agent's preset for the env family, scaled by the budget,
    then ``overrides`` (agent fields, or run fields such as ``eval_every``).

    Raises:
        ValueError: for an unknown algorithm or an unknown override key (one line, listing valid keys).
    """
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of: {', '.join(sorted(AGENTS))}")
    budget = get_budget(budget)
    family = env_family(env_id)
    run = RunConfig(algo=algo, env_id=env_id, seed=seed, budget=budget, total_steps=total_steps, **run_fields)
    agent = AGENTS[algo].preset(family)
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    agent_keys = {f.name for f in dataclasses.fields(agent)}
    for key, value in (overrides or {}).items():
        if key in agent_keys:
            setattr(agent, key, _coerce(value, getattr(agent, key), key))
        elif key in run_keys - {"algo", "env_id"}:
            setattr(run, key, _coerce(value, getattr(run, key), key))
        else:
            raise ValueError(f"unknown setting {key!r} for {algo}; valid: {', '.join(sorted(agent_keys | run_keys))}")
    run.total_steps = run.total_steps or _STEPS[family][budget]
    run.eval_every = run.eval_every or (max(run.total_steps // 2, 1) if budget == "quick" else _EVAL_EVERY[family])
    run.eval_episodes = run.eval_episodes or by_budget(quick=2, book=10, full=10, budget=budget)
    if budget == "full" and not run.eval_steps:
        run.eval_steps = _EVAL_STEPS_FULL.get(family, 0)
    run.checkpoint_every = run.checkpoint_every or max(run.total_steps // 10, 1)
    if budget == "quick":  # sizes shrink with the steps so that a quick run still learns a little
        agent.learning_starts = min(agent.learning_starts, run.total_steps // 4)
        agent.buffer_size = min(agent.buffer_size, max(run.total_steps, 1_000))
        agent.target_update = min(agent.target_update, max(run.total_steps // 10, 1))
    return run, agent


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Turn a command-line string into the type of the current value."""
    if not isinstance(value, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if isinstance(current, tuple):
            return tuple(int(v) for v in value.split(",") if v.strip())
        if isinstance(current, int):
            return int(float(value)) if float(value).is_integer() else int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        raise ValueError(f"setting {key}={value!r}: expected a {type(current).__name__}") from None
    return value


def _episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """A seed for one episode, independent across (seed, stream, episode)."""
    return int(np.random.SeedSequence([seed, stream, episode]).generate_state(1)[0])


def make_run_env(run: RunConfig, agent_config: Any) -> Any:
    """The env a run trains and evaluates on."""
    return make_env(run.env_id, frame_stack=agent_config.frame_stack, hide=run.hide, flicker=run.flicker)


def saved_config(run_dir: str | Path | RunDir) -> tuple[RunConfig, Any]:
    """The run's and the agent's config, as stored in a run directory's ``config.json``."""
    saved = (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)).config()
    run = RunConfig(**{**saved["run"], "hide": tuple(saved["run"]["hide"])})
    agent = AGENTS[run.algo].Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["agent"].items()})
    return run, agent


def evaluate(agent: Agent, env: Any, episodes: int, epsilon: float, seed: int, max_steps: int = 0) -> list[float]:
    """Returns of evaluation episodes at ``epsilon``, each reset with its own seed derived from ``seed``.

    ``max_steps == 0``: exactly ``episodes`` episodes. ``max_steps > 0``: episodes until ``max_steps`` env
    steps are spent (the protocol of the Atari papers: "25k steps"); the episode cut off by the limit is
    dropped unless no episode finished, in which case its partial return is the only one.
    """
    rng = np.random.default_rng([seed, 0xE7A1])
    returns: list[float] = []
    steps_left = max_steps
    for episode in range(episodes if not max_steps else 2**62):
        obs, _ = env.reset(seed=_episode_seed(seed, episode, stream=1))
        state, total, done = agent.initial_state(), 0.0, False
        while not done:
            action, state = agent.act(obs, state, epsilon, rng)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
            if max_steps:
                steps_left -= 1
                if steps_left == 0 and not done:
                    return returns or [total]
        returns.append(total)
        if max_steps and steps_left == 0:
            break
    return returns


class RandomPolicy:
    """Uniformly random actions, with the agent interface :func:`evaluate` needs: the floor every learning
    curve should clear. ``evaluate(RandomPolicy(env.action_space.n), env, 100, 1.0, seed=0)``."""

    def __init__(self, n_actions: int) -> None:
        self.n_actions = int(n_actions)

    def initial_state(self) -> None:
        return None

    def act(self, obs: Any, state: None, epsilon: float, rng: np.random.Generator) -> tuple[int, None]:
        return int(rng.integers(self.n_actions)), state


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    agent: Agent
    steps: int
    episodes: int
    final_eval: float  # mean return of the last evaluation (nan if none)
    interrupted: bool


class _StopRequest:
    """First Ctrl-C: finish the episode, save, stop. Second: stop at once without saving."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: finishing this episode, then saving a checkpoint (Ctrl-C again to stop without saving)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(run: RunConfig, agent_config: Any, out: str | Path, *, resume: bool = False, show_progress: bool = True,
          stop_at: int | None = None) -> TrainResult:
    """Train ``run.algo`` on ``run.env_id`` and write a run directory at ``out``.

    Args:
        run, agent_config: from :func:`build_config`. With ``resume``, both are read from ``out`` instead.
        out: the run directory.
        resume: continue the run in ``out`` from its last checkpoint, to the same result as an
            uninterrupted run.
        show_progress: a progress bar with steps/s and the mean return of the last 10 episodes.
        stop_at: stop (with a checkpoint) at the first episode end at or after this step, as Ctrl-C does.
    """
    run_dir = RunDir(out)
    if resume:
        run, agent_config = saved_config(run_dir)
    agent_cls = AGENTS[run.algo]
    env = make_run_env(run, agent_config)
    eval_env = make_run_env(run, agent_config)
    n_actions = check_discrete_actions(env, run.env_id, run.algo.upper())
    seed_everything(run.seed)
    if run.threads:
        torch.set_num_threads(run.threads)
    device = get_device(run.device or None)
    agent = agent_cls(env.observation_space.shape, n_actions, agent_config, device)
    buffer = agent.make_buffer(env.observation_space.dtype, seed=_episode_seed(run.seed, 0, stream=2))
    explore_rng = np.random.default_rng([run.seed, 0xE8])
    step = episode = 0
    meta: dict[str, Any] = {}
    update_sums: dict[str, float] = {}  # training scalars summed since the last row of updates.csv
    update_count = 0
    if resume:
        state, replay = run_dir.load_checkpoint()
        agent.load_state_dict(state["agent"])
        if replay is None:
            raise FileNotFoundError(f"{run_dir.path} has no replay.pt: cannot resume exactly")
        buffer.load_state_dict(replay)
        explore_rng.bit_generator.state = json.loads(state["explore_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, episode = int(state["step"]), int(state["episode"])
        update_sums, update_count = json.loads(state.get("update_log", '[{}, 0]'))
        run_dir.truncate_after(step)
        meta = run_dir.meta()
        meta["resumed"] = meta.get("resumed", 0) + 1
    else:
        run_dir = RunDir.create(out, {"run": dataclasses.asdict(run), "agent": dataclasses.asdict(agent_config)})
        meta = {"started": now(), "seed": run.seed, "budget": run.budget, "wall_seconds": 0.0}
    meta.update(provenance(device), parameters=agent.num_parameters())
    c = agent_config
    eps_duration = int(c.eps_fraction * run.total_steps)
    recent: deque[float] = deque(maxlen=10)
    last_eval = float("nan")
    next_checkpoint = (step // run.checkpoint_every + 1) * run.checkpoint_every

    def save() -> None:
        state = {"agent": agent.state_dict(), "step": step, "episode": episode,
                 "explore_rng": json.dumps(explore_rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                 "update_log": json.dumps([update_sums, update_count])}
        run_dir.save_checkpoint(state, buffer.state_dict())

    obs, _ = env.reset(seed=_episode_seed(run.seed, episode))
    recurrent_state = agent.initial_state()
    episode_return, episode_length = 0.0, 0
    start = time.perf_counter()
    start_step = step
    interrupted = False
    bar = progress(total=run.total_steps, initial=step, desc=f"{run.algo} {run.env_id} seed {run.seed}",
                   disable=not show_progress, unit="step")
    with _StopRequest() as stop:
        while step < run.total_steps:
            epsilon = linear_schedule(c.eps_start, c.eps_end, eps_duration, step)
            action, recurrent_state = agent.act(obs, recurrent_state, epsilon, explore_rng)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated, truncated)
            obs = next_obs
            step += 1
            episode_return += float(reward)
            episode_length += 1
            if step > c.learning_starts and step % c.train_freq == 0:
                agent.set_step(step)
                for _ in range(c.gradient_steps):
                    for key, value in agent.update(buffer).items():
                        update_sums[key] = update_sums.get(key, 0.0) + value
                    update_count += 1
            if step % UPDATE_LOG_EVERY == 0 and update_count:
                run_dir.append_updates(step, {k: v / update_count for k, v in update_sums.items()})
                update_sums, update_count = {}, 0
            if step % c.target_update == 0:
                agent.sync_target()
            if step % run.eval_every == 0 or step == run.total_steps:
                returns = evaluate(agent, eval_env, run.eval_episodes, c.eval_epsilon,
                                   seed=run.seed * 1_000_003 + step, max_steps=run.eval_steps)
                last_eval = float(np.mean(returns))
                run_dir.append("eval", (step, f"{last_eval:.6g}", f"{np.std(returns):.6g}", len(returns)))
            if step % 500 == 0:
                bar.update(step - bar.n)
                if recent:
                    bar.set_postfix(ret=f"{np.mean(recent):.1f}", eps=f"{epsilon:.2f}", refresh=False)
            if terminated or truncated:
                run_dir.append("metrics", (episode, step, f"{episode_return:.6g}", episode_length))
                recent.append(episode_return)
                episode += 1
                obs, _ = env.reset(seed=_episode_seed(run.seed, episode))
                recurrent_state = agent.initial_state()
                episode_return, episode_length = 0.0, 0
                stopping = stop.requested or (stop_at is not None and step >= stop_at)
                if stopping or step >= next_checkpoint:
                    save()
                    next_checkpoint = (step // run.checkpoint_every + 1) * run.checkpoint_every
                if stopping:
                    interrupted = True
                    break
        if not interrupted:
            save()  # the end of the run: a mid-episode stop, but nothing follows it
            run_dir.save_policy(agent.q.state_dict())
    bar.update(step - bar.n)
    bar.close()
    wall = time.perf_counter() - start
    meta.update(finished=now(), steps=step, episodes=episode, interrupted=interrupted,
                wall_seconds=round(meta.get("wall_seconds", 0.0) + wall, 2),
                steps_per_second=round((step - start_step) / wall, 1) if wall > 0 else None,
                final_eval_mean_return=None if math.isnan(last_eval) else last_eval)
    run_dir.write_meta(meta)
    env.close()
    eval_env.close()
    return TrainResult(run_dir.path, agent, step, episode, last_eval, interrupted)


def load_agent(run_dir: str | Path, device: str | None = None) -> tuple[Agent, RunConfig, Any]:
    """Rebuild a trained agent from a run directory: from ``checkpoint.pt`` where there is one, else from
    the final ``policy.pt`` (the online network only, which is what a fresh clone has)."""
    run, agent_config = saved_config(run_dir)
    env = make_run_env(run, agent_config)
    agent = AGENTS[run.algo](env.observation_space.shape, int(env.action_space.n), agent_config,
                             get_device(device or run.device or None))
    records = RunDir(run_dir)
    if records.checkpoint_path.exists():
        state, _ = records.load_checkpoint(with_replay=False)
        agent.load_state_dict(state["agent"])
    elif records.policy_path.exists():
        policy = torch.load(records.policy_path, map_location=agent.device, weights_only=True)
        agent.q.load_state_dict(policy)
        agent.target.load_state_dict(policy)
    else:
        raise FileNotFoundError(f"{records.path} has neither checkpoint.pt nor policy.pt")
    env.close()
    return agent, run, agent_config
