"""The training harness: what every run needs, whatever the algorithm (book chapters 2 and 3).

The harness owns the run: its config and run directory, seeding, the evaluation cadence, checkpoints
with exact resume, stop signals (Ctrl-C, and SIGTERM as a cluster sends before preemption), the
progress bar and ``meta.json``. It builds the agent from :data:`companion.agents.AGENTS` and hands it
to the loop the agent names (``agent.loop``) in :mod:`companion.loops`:

- ``off_policy`` (:mod:`companion.loops.off_policy`): Q-learning agents (DQN, DRQN, DARQN, SA-DQN);
  replay, epsilon-greedy exploration, target copies; checkpoints at episode ends.
- ``on_policy`` (:mod:`companion.loops.on_policy`): actor-critic agents (PPO, A2C and their recurrent
  and attention variants); rollouts over vector envs, GAE, epochs of minibatches; checkpoints at
  rollout ends.

The agent owns its networks and its update; the loop owns the env, the buffer or rollout and the
schedule. Reading order: :class:`RunConfig`, :func:`build_config`, :func:`train`, :func:`evaluate`.

Reproducibility: every episode is reset with a seed derived from the run's seed and the episode's
index, and every random generator (exploration, sampling, evaluation) is seeded from the run's seed.
A checkpoint holds the agent, torch's random state and the loop's own state, so a run that is
interrupted and resumed produces the same records as one that was not, even when the interruption is a
kill (SIGKILL: out of memory, a job's time limit) in the middle of writing a checkpoint
(:meth:`~companion.records.RunDir.save_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from companion.agents import AGENTS, Agent
from companion.agents.base import EnvPreset
from companion.budget import by_budget, get_budget
from companion.envs import check_discrete_actions, env_family, make_env
from companion.loops import LOOPS, LoopContext
from companion.records import DamagedRunError, RunDir, load_file, now, provenance
from companion.utils import episode_seed, get_device, progress, seed_everything

__all__ = ["FAMILY_DEFAULTS", "RandomPolicy", "RunConfig", "TrainResult", "build_config", "check_resume", "evaluate",
           "fallback_note", "load_agent", "make_run_env", "random_return", "saved_config", "train"]


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
    prev_action: bool = False  # append the previous action (one-hot) to vector observations
    prev_reward: bool = False  # ... and the previous reward
    checkpoint_every: int = 0  # env steps between checkpoints (at the next episode end); 0: by budget
    device: str = ""  # "" = automatic
    threads: int = 1  # torch CPU threads; 0 = torch's default. Small networks train fastest on one
    # (measured on a 2-core machine: a DQN update on CartPole took 4 ms with 1 thread, 25-96 ms with 2).
    # torch.compile the networks the update runs (Agent.compile; not NEC). Compiling takes seconds to a minute (one
    # line on stderr says how long); records then differ from an eager run's in float rounding. benchmarks/flop_bound.py
    # measures what it gains per update.
    compile: bool = False


# Steps per run, by env family and budget. The budget scales steps and sizes, never the algorithm.
_STEPS = {
    "gym": dict(quick=3_000, book=50_000, full=100_000),
    "popgym": dict(quick=3_000, book=50_000, full=200_000),
    "MinAtar": dict(quick=2_000, book=100_000, full=5_000_000),
    "ALE": dict(quick=1_000, book=100_000, full=5_000_000),
}
_EVAL_EVERY = {"gym": 5_000, "popgym": 5_000, "MinAtar": 10_000, "ALE": 50_000}
_EVAL_STEPS_FULL = {"ALE": 25_000}  # the full budget evaluates by steps, as Mnih et al. and Sorokin et al. do


#: env families whose presets were set for one env: the family's name in a message, and that env. An env of such
#: a family without a preset of its own (:meth:`~companion.agents.base.Agent.env_preset`) falls back to them, and
#: :func:`train` says so. ALE's and MinAtar's presets are their papers' settings for every game: no note.
FAMILY_DEFAULTS: dict[str, tuple[str, str]] = {"gym": ("classic-control", "CartPole-v1"),
                                               "popgym": ("popgym", "CartPole-v1")}
_noted: set[tuple[str, str]] = set()  # (algo, env id) pairs whose fall-back was printed in this process


def fallback_note(algo: str, env_id: str) -> str:
    """The line :func:`train` prints when ``env_id`` takes its family's preset, set for another env
    (``"dqn: no preset for Foo-v0; using the classic-control defaults (set for CartPole-v1) ..."``); ``""`` when the
    env has its own preset (:data:`companion.agents.dqn.CLASSIC_CONTROL`), is the env the family's was set for, or
    belongs to a family whose presets are not one env's."""
    family = env_family(env_id)
    if family not in FAMILY_DEFAULTS or AGENTS[algo].env_preset(env_id) is not None:
        return ""
    name, tuned_on = FAMILY_DEFAULTS[family]
    if env_id == tuned_on:
        return ""
    return (f"{algo}: no preset for {env_id}; using the {name} defaults (set for {tuned_on}); "
            f"--set KEY=VALUE changes a setting")


def build_config(algo: str, env_id: str, *, seed: int = 0, budget: str | None = None, total_steps: int = 0,
                 overrides: dict[str, Any] | None = None, **run_fields: Any) -> tuple[RunConfig, Any]:
    """The run's and the agent's config: the agent's preset for the env, scaled by the budget, then ``overrides``
    (agent fields, or run fields such as ``eval_every``).

    The preset is the env's own where the agent has one (:meth:`~companion.agents.base.Agent.env_preset`: RL-Zoo's
    tunings of classic-control tasks, :data:`companion.agents.dqn.CLASSIC_CONTROL` and
    :data:`companion.agents.ppo.CLASSIC_CONTROL`, with their step counts at the book budget), else its env
    family's. Where that is a family preset set for another env, :func:`train` says so when the run starts
    (:func:`fallback_note`).

    Raises:
        ValueError: for an unknown algorithm or an unknown override key (one line, listing valid keys), a
            negative count, or a setting out of its range (``_check_run``).
    """
    if algo not in AGENTS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of: {', '.join(sorted(AGENTS))}")
    budget = get_budget(budget)
    family = env_family(env_id)
    run = RunConfig(algo=algo, env_id=env_id, seed=seed, budget=budget, total_steps=total_steps, **run_fields)
    own = AGENTS[algo].env_preset(env_id)
    agent = AGENTS[algo].config_for(env_id, family)
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    agent_keys = {f.name for f in dataclasses.fields(agent)}
    for key, value in (overrides or {}).items():
        if key in agent_keys:
            setattr(agent, key, _not_negative(_coerce(value, getattr(agent, key), key), key))
        elif key in run_keys - {"algo", "env_id"}:
            setattr(run, key, _coerce(value, getattr(run, key), key))
        else:
            raise ValueError(f"unknown setting {key!r} for {algo}; valid: {', '.join(sorted(agent_keys | run_keys))}")
    run.total_steps = run.total_steps or _default_steps(family, budget, own)
    run.eval_every = run.eval_every or (max(run.total_steps // 2, 1) if budget == "quick" else _EVAL_EVERY[family])
    run.eval_episodes = run.eval_episodes or by_budget(quick=2, book=10, full=10, budget=budget)
    if budget == "full" and not run.eval_steps:
        run.eval_steps = _EVAL_STEPS_FULL.get(family, 0)
    run.checkpoint_every = run.checkpoint_every or max(run.total_steps // 10, 1)
    _check_run(run)
    if budget == "quick":  # sizes shrink with the steps so that a quick run still learns a little
        AGENTS[algo].fit_to_steps(agent, run.total_steps)
    return run, agent


def _say_fallback(run: RunConfig) -> None:
    """Print :func:`fallback_note` for a run that starts (its env and run directory accepted: a refused run's
    error stays one line), on stderr, once per algorithm and env in a process (not once per seed)."""
    note = fallback_note(run.algo, run.env_id)
    if note and (run.algo, run.env_id) not in _noted:
        _noted.add((run.algo, run.env_id))
        print(note, file=sys.stderr, flush=True)


def _default_steps(family: str, budget: str, own: EnvPreset | None) -> int:
    """A run's length when none is given: an env preset's ``steps`` at the ``book`` budget and twice that at
    ``full`` (the classic-control family's ratio), else (and at ``quick``) the env family's."""
    if own is not None and own.steps and budget != "quick":
        return own.steps * (2 if budget == "full" else 1)
    return _STEPS[family][budget]


#: run fields that count something: 0 means "by budget", and once the defaults are filled in each is at least 1
_COUNTS = ("total_steps", "eval_every", "eval_episodes", "checkpoint_every")


def _check_run(run: RunConfig) -> None:
    """Refuse (``ValueError``, one line) a run that would do nothing or nonsense: a count below 1 (such as
    ``total_steps=-5``, which ran no step and reported an evaluation of nan), a negative seed or number,
    a flicker probability outside [0, 1]."""
    for key in _COUNTS:
        if getattr(run, key) < 1:
            raise ValueError(f"setting {key}={getattr(run, key)}: expected a positive integer")
    for key in ("seed", "eval_steps", "threads"):
        _not_negative(getattr(run, key), key)
    if any(i < 0 for i in run.hide):
        raise ValueError(f"setting hide={run.hide}: expected observation indices (0 or more)")
    if not 0.0 <= run.flicker <= 1.0:
        raise ValueError(f"setting flicker={run.flicker}: expected a probability between 0 and 1")


def _not_negative(value: Any, key: str) -> Any:
    """``value``, unless it is a negative integer (no count, size or step of a run or an agent is negative)."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError(f"setting {key}={value}: expected an integer of 0 or more")
    return value


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


def make_run_env(run: RunConfig, agent_config: Any) -> Any:
    """The env a run trains and evaluates on."""
    kwargs: dict[str, Any] = {}
    if env_family(run.env_id) == "ALE" and hasattr(agent_config, "sticky_actions"):
        kwargs["repeat_action_probability"] = agent_config.sticky_actions
    return make_env(run.env_id, frame_stack=agent_config.frame_stack, hide=run.hide, flicker=run.flicker,
                    prev_action=run.prev_action, prev_reward=run.prev_reward, **kwargs)


def check_resume(run_dir: str | Path, overrides: dict[str, Any] | None = None, **given: Any) -> None:
    """Refuse to resume ``run_dir`` with settings that contradict its ``config.json``.

    ``given``: run fields as typed (``algo``, ``env_id``, ``seed``, ``budget``, ``total_steps``, ``hide``,
    ``flicker``; ``None`` for one not typed, which is not compared), ``overrides``: settings as for
    :func:`build_config`. A resume continues the stored run with its stored settings; one typed
    differently would otherwise be ignored without a word.

    Raises:
        ValueError: one line naming each differing setting with its stored and given values, or an
            unknown setting.
    """
    run, agent = saved_config(run_dir)
    differ = []
    for key, value in {**{k: v for k, v in given.items() if v is not None}, **(overrides or {})}.items():
        holder = run if hasattr(run, key) else agent if hasattr(agent, key) else None
        if holder is None:
            raise ValueError(f"unknown setting {key!r} for {run.algo}")
        stored = getattr(holder, key)
        if _coerce(value, stored, key) != stored:
            differ.append(f"{key} is {stored!r} there, {value!r} here")
    if differ:
        raise ValueError(f"{run_dir}/config.json holds other settings: {'; '.join(differ)}. To resume the run, "
                         f"give --resume --out {run_dir} alone; to start another, choose another --out")


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
        obs, _ = env.reset(seed=episode_seed(seed, episode, stream=1))
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


def random_return(env_id: str, episodes: int = 100, seed: int = 0, **env_kwargs: Any) -> float:
    """The mean return of :class:`RandomPolicy` on ``make_env(env_id, **env_kwargs)``, by :func:`evaluate`."""
    env = make_env(env_id, **env_kwargs)
    try:
        return float(np.mean(evaluate(RandomPolicy(env.action_space.n), env, episodes, 1.0, seed=seed)))
    finally:
        env.close()


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    agent: Agent
    steps: int
    episodes: int
    final_eval: float  # mean return of the run's last evaluation (nan if none)
    interrupted: bool
    already_finished: bool = False  # a resume found the run finished, and trained no further


class _StopRequest:
    """The first Ctrl-C (SIGINT) or SIGTERM: finish the episode (or rollout), save, stop. A second: stop at
    once without saving. SIGTERM is what a cluster scheduler sends before it preempts a job."""

    _SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for signum in self._SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: no handler, signals behave as usual
                pass
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{self._SIGNALS.get(signum, 'signal')}: finishing this episode (or rollout), then saving a "
              f"checkpoint ({self._SIGNALS.get(signum, 'the signal')} again to stop without saving)", flush=True)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def train(run: RunConfig, agent_config: Any, out: str | Path, *, resume: bool = False, show_progress: bool = True,
          stop_at: int | None = None) -> TrainResult:
    """Train ``run.algo`` on ``run.env_id`` and write a run directory at ``out``.

    A fresh run whose env took its family's preset, set for another env, starts with one line on stderr
    saying so (:func:`fallback_note`); a resumed run continues without it.

    Args:
        run, agent_config: from :func:`build_config`. With ``resume``, both are read from ``out`` instead.
        out: the run directory.
        resume: continue the run in ``out`` from its last checkpoint, to the same result as an
            uninterrupted run (from the checkpoint before, ``checkpoint.prev.pt``, where the last is
            damaged or lost its replay buffer to a kill). A finished run is left as it is
            (``already_finished``).
        show_progress: a progress bar with steps/s and the mean return of the last 10 episodes.
        stop_at: stop (with a checkpoint) at the first episode end (off-policy) or rollout end (on-policy)
            at or after this step, as Ctrl-C does.
    """
    run_dir = RunDir(out)
    if resume:
        run, agent_config = saved_config(run_dir)
        if _finished(run_dir, run):
            return _finished_result(run_dir)
    agent_cls = AGENTS[run.algo]
    probe = make_run_env(run, agent_config)
    eval_env = make_run_env(run, agent_config)
    n_actions = check_discrete_actions(probe, run.env_id, run.algo.upper())
    obs_shape = probe.observation_space.shape
    probe.close()
    seed_everything(run.seed)
    if run.threads:
        torch.set_num_threads(run.threads)
    device = get_device(run.device or None)
    agent = agent_cls(obs_shape, n_actions, agent_config, device)
    if run.compile:  # before the run directory exists: an agent that refuses leaves nothing behind
        agent.compile()
    resume_from = None
    if resume:
        saved = run_dir.load_checkpoint()
        state = saved.state
        agent.load_state_dict(state["agent"])
        torch.set_rng_state(state["torch_rng"])
        resume_from = (state["loop"], saved.replay)
        step = int(state["loop"]["step"])
        if saved.passed_over:
            print(f"resuming from {saved.path} (step {step}): {'; '.join(saved.passed_over)}", file=sys.stderr)
        if saved.path == run_dir.previous_checkpoint_path:
            run_dir.restore_previous_checkpoint()
        run_dir.truncate_after(step)
        meta = run_dir.meta()
        meta["resumed"] = meta.get("resumed", 0) + 1
    else:
        step = 0
        run_dir = RunDir.create(out, {"run": dataclasses.asdict(run), "agent": dataclasses.asdict(agent_config)})
        _say_fallback(run)
        meta = {"started": now(), "seed": run.seed, "budget": run.budget, "wall_seconds": 0.0}
    meta.update(provenance(device), parameters=agent.num_parameters())

    def evaluate_at(at_step: int) -> float:
        returns = evaluate(agent, eval_env, run.eval_episodes, agent_config.eval_epsilon,
                           seed=run.seed * 1_000_003 + at_step, max_steps=run.eval_steps)
        mean = float(np.mean(returns))
        run_dir.append("eval", (at_step, f"{mean:.6g}", f"{np.std(returns):.6g}", len(returns)))
        return mean

    def checkpoint(loop_state: dict[str, Any], replay: dict[str, Any] | None) -> None:
        run_dir.save_checkpoint({"agent": agent.state_dict(), "torch_rng": torch.get_rng_state(),
                                 "loop": loop_state}, replay, step=int(loop_state["step"]))

    start = time.perf_counter()
    bar = progress(total=run.total_steps, initial=step, desc=f"{run.algo} {run.env_id} seed {run.seed}",
                   disable=not show_progress, unit="step")
    with _StopRequest() as stop:
        context = LoopContext(agent=agent, env_fn=lambda: make_run_env(run, agent_config), records=run_dir,
                              seed=run.seed, total_steps=run.total_steps, eval_every=run.eval_every,
                              checkpoint_every=run.checkpoint_every, evaluate=evaluate_at, checkpoint=checkpoint,
                              stop=stop, stop_at=stop_at, progress=bar, resume=resume_from)
        result = LOOPS[agent.loop](context)
    if not result.interrupted:
        run_dir.save_policy(agent.policy_state_dict())
    bar.update(result.steps - bar.n)
    bar.close()
    wall = time.perf_counter() - start
    last_eval = run_dir.last_eval() if math.isnan(result.last_eval) else result.last_eval  # none this session
    meta.update(finished=now(), steps=result.steps, episodes=result.episodes, interrupted=result.interrupted,
                wall_seconds=round(meta.get("wall_seconds", 0.0) + wall, 2),
                steps_per_second=round((result.steps - step) / wall, 1) if wall > 0 else None,
                final_eval_mean_return=None if math.isnan(last_eval) else last_eval)
    run_dir.write_meta(meta)
    eval_env.close()
    return TrainResult(run_dir.path, agent, result.steps, result.episodes, last_eval, result.interrupted)


def _finished(run_dir: RunDir, run: RunConfig) -> bool:
    """Whether the run's last session ran it to its end (its ``meta.json`` says so; a session killed
    before it wrote ``meta.json`` leaves the one before, which does not)."""
    meta = run_dir.meta()
    return meta.get("interrupted") is False and meta.get("steps", 0) >= run.total_steps


def _finished_result(run_dir: RunDir) -> TrainResult:
    """What a resume of a finished run returns: the run as it is, its trained agent and its last evaluation."""
    agent, _, _ = load_agent(run_dir.path)
    meta = run_dir.meta()
    return TrainResult(run_dir.path, agent, int(meta["steps"]), int(meta["episodes"]), run_dir.last_eval(),
                       interrupted=False, already_finished=True)


def load_agent(run_dir: str | Path, device: str | None = None) -> tuple[Agent, RunConfig, Any]:
    """Rebuild a trained agent from a run directory: from ``checkpoint.pt`` where there is one, else from
    the final ``policy.pt`` (the acting network only, which is what a fresh clone has).

    Raises:
        FileNotFoundError: neither file is there.
        DamagedRunError: the file does not load (truncated or corrupted); the message names it.
    """
    run, agent_config = saved_config(run_dir)
    env = make_run_env(run, agent_config)
    agent = AGENTS[run.algo](env.observation_space.shape, int(env.action_space.n), agent_config,
                             get_device(device or run.device or None))
    records = RunDir(run_dir)
    if records.checkpoint_path.exists():
        agent.load_state_dict(_checked(load_file(records.checkpoint_path), "agent", records.checkpoint_path))
    elif records.policy_path.exists():
        agent.load_policy_state_dict(load_file(records.policy_path))
    else:
        raise FileNotFoundError(f"{records.path} has neither checkpoint.pt nor policy.pt")
    env.close()
    return agent, run, agent_config


def _checked(state: dict[str, Any], key: str, path: Path) -> Any:
    """``state[key]``, or :class:`~companion.records.DamagedRunError` naming ``path`` if the file loaded
    but is not what the harness wrote."""
    if not isinstance(state, dict) or key not in state:
        raise DamagedRunError(f"{path} is damaged (it loads, but holds no {key!r})")
    return state[key]
