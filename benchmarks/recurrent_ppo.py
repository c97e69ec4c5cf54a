"""Companion memory actor-critics against sb3-contrib's RecurrentPPO on PositionOnlyCartPole: time to solve, steps/s.

Run by hand, on an otherwise idle machine (needs the `bench` extra: `pip install -e ".[bench]"`):

    .venv/bin/python benchmarks/recurrent_ppo.py [--seeds 0 1 2] [--algos ppo-lstm ppo-attn sb3]
        [--max-steps 200000] [--eval-every 2048] [--threshold 0.9] [--verbose] [--save]

The task is ``popgym-PositionOnlyCartPoleEasy-v0`` (cart position and pole angle only, 200-step episodes, reward
1/200 a step, so returns lie in [0, 1]), built by ``companion.envs.make_env`` for both libraries. The protocol is
the same for both, in one process, one torch thread each:

- every ``--eval-every`` env steps (at the first update boundary at or after each multiple), evaluate the policy
  the last update produced on 10 episodes with its most likely action, each episode reset with the seed
  ``companion.train.evaluate`` derives from the run's seed and the step (RecurrentPPO carries its LSTM state and
  the episode starts, as sb3-contrib's ``evaluate_policy`` does);
- stop at the first evaluation whose mean is >= ``--threshold`` (solved), or at ``--max-steps``;
- time to solve = training wall time (``time.perf_counter``) up to that evaluation, evaluations excluded (their
  time is reported apart); steps/s = env steps / that training time, at the last evaluation.

RecurrentPPO runs twice over. ``sb3``: its defaults (``"MlpLstmPolicy"``, one env, 128-step rollouts, 10 epochs of
batches of 128, LSTMs of 256 for actor and critic), as the project's reference measurement did (about 160 steps/s,
solved in about 100k steps on a 2-core machine); the goals are stated against it. ``sb3-zoo``: RL-Zoo's
``ppo_lstm.yml`` entry for CartPoleNoVel, the settings the companion's presets take their hyperparameters from (8
envs x 32 steps, one batch of 256, 20 epochs, lr 1e-3 and clip 0.2 annealed, gamma 0.98, lambda 0.8, observations
and rewards normalised, LSTMs of 64, ReLU): the like-for-like comparison, where the ratios measure the
implementations rather than the settings. The companion agents run with their ``popgym`` presets and the ``book``
budget (their learning rate and clip range anneal over ``--max-steps``, as sb3-zoo's do), in the on-policy loop the
harness runs, with its checkpoints (every tenth of ``--max-steps``; their time counts, and is reported apart too).

It prints, per run: solved or not, steps and training seconds to solve, evaluation seconds, steps/s, and where
the training time went: acting (the policy's forward passes while collecting, bootstraps included), env steps,
updates, checkpoints, and the rest (the loop itself: rollout storage, GAE, records). Then, per companion agent
against RecurrentPPO, the medians over seeds and two ratios, with the time ratio split into its two factors
(time ratio = steps ratio / speed ratio: fewer samples, or faster ones). ``--save`` writes
``results/benchmarks/recurrent_ppo.json`` with the rows, the ratios, the versions and the settings.

Goals (the project's issue): ``ppo-lstm`` and ``ppo-attn`` reach 0.9 in <= 1/5 of RecurrentPPO's training time
(time ratio <= 0.2, medians of 3 seeds) and run >= 3x its env steps per second (speed ratio >= 3).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.agents import AGENTS  # noqa: E402
from companion.envs import check_discrete_actions, make_env  # noqa: E402
from companion.loops import LOOPS, LoopContext  # noqa: E402
from companion.loops.base import next_multiple  # noqa: E402
from companion.records import RunDir, save_benchmark  # noqa: E402
from companion.train import build_config, evaluate, make_run_env  # noqa: E402
from companion.utils import get_device, seed_everything  # noqa: E402

ENV_ID = "popgym-PositionOnlyCartPoleEasy-v0"
EVAL_EPISODES = 10
GOALS = {"time_ratio": 0.2, "speed_ratio": 3.0}  # time ratio <= 0.2, speed ratio >= 3
GOAL_ALGOS = ("ppo-lstm", "ppo-attn")
ON_POLICY = sorted(name for name, cls in AGENTS.items() if cls.loop == "on_policy")
PARTS = ("act", "env", "update", "ckpt")  # timed parts of training (ckpt: checkpoints); the rest is "other"


class Clock:
    """Training time with the evaluations taken out, and the time spent in named parts of training."""

    def __init__(self) -> None:
        self.start = 0.0
        self.eval_s = 0.0
        self.parts: dict[str, float] = defaultdict(float)

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn``, adding its time to ``part``."""
        parts = self.parts

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[part] += time.perf_counter() - t0

        return wrapper

    def train_seconds(self, now: float) -> float:
        return now - self.start - self.eval_s


class TimedEnv(gym.Wrapper):
    """Adds the time of the wrapped env's ``step`` and ``reset`` to ``parts["env"]``."""

    def __init__(self, env: gym.Env, parts: dict[str, float]) -> None:
        super().__init__(env)
        self._parts = parts

    def step(self, action: Any) -> Any:
        t0 = time.perf_counter()
        out = self.env.step(action)
        self._parts["env"] += time.perf_counter() - t0
        return out

    def reset(self, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.env.reset(**kwargs)
        self._parts["env"] += time.perf_counter() - t0
        return out


class Protocol:
    """The evaluation both libraries get: 10 seeded episodes with the most likely action, timed apart from
    training; the first mean >= ``threshold`` solves the task."""

    def __init__(self, algo: str, seed: int, policy: Any, clock: Clock, threshold: float, verbose: bool) -> None:
        self.algo, self.seed, self.policy, self.clock = algo, seed, policy, clock
        self.threshold, self.verbose = threshold, verbose
        self.env = make_env(ENV_ID)
        self.solved = False
        self.last: dict[str, Any] = {}
        self.evaluations: list[tuple[int, float]] = []

    def __call__(self, step: int) -> float:
        t0 = time.perf_counter()
        train_s = self.clock.train_seconds(t0)
        parts = dict(self.clock.parts)
        returns = evaluate(self.policy, self.env, EVAL_EPISODES, 0.0, seed=self.seed * 1_000_003 + step)
        mean = float(np.mean(returns))
        self.clock.eval_s += time.perf_counter() - t0
        self.evaluations.append((step, round(mean, 4)))
        self.solved = mean >= self.threshold
        self.last = {"steps": step, "train_s": train_s, "eval_s": self.clock.eval_s, "return": mean, "parts": parts}
        if self.verbose:
            print(f"  {self.algo} seed {self.seed}: step {step:7d}  return {mean:.3f}  train {train_s:7.1f} s  "
                  f"eval {self.clock.eval_s:6.1f} s", flush=True)
        return mean

    def row(self) -> dict[str, Any]:
        last = self.last
        parts = {f"{p}_s": round(last["parts"].get(p, 0.0), 3) for p in PARTS}
        parts["other_s"] = round(last["train_s"] - sum(last["parts"].get(p, 0.0) for p in PARTS), 3)
        return {"algo": self.algo, "seed": self.seed, "solved": self.solved, "steps": last["steps"],
                "train_s": round(last["train_s"], 3), "eval_s": round(last["eval_s"], 3),
                "steps_per_s": round(last["steps"] / last["train_s"], 2), "final_return": round(last["return"], 4),
                **parts, "evaluations": self.evaluations}


class _NullBar:
    """The tqdm-like bar the loop updates, drawing nothing."""

    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix(self, **kwargs: Any) -> None:
        pass


def run_companion(algo: str, seed: int, args: argparse.Namespace,
                  workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One companion run, built as ``companion.train.train`` builds it, with our evaluation and stop."""
    run, config = build_config(algo, ENV_ID, seed=seed, budget="book", total_steps=args.max_steps,
                               overrides={"eval_every": args.eval_every, "eval_episodes": EVAL_EPISODES,
                                          "threads": 1, "device": "cpu"})
    probe = make_run_env(run, config)
    n_actions = check_discrete_actions(probe, run.env_id, algo.upper())
    obs_shape = probe.observation_space.shape
    probe.close()
    seed_everything(run.seed)
    torch.set_num_threads(run.threads)
    agent = AGENTS[algo](obs_shape, n_actions, config, get_device(run.device))
    clock = Clock()
    for name in ("step", "value", "refresh_state"):  # what the loop calls to act (evaluation calls agent.act)
        setattr(agent, name, clock.timed("act", getattr(agent, name)))
    agent.update = clock.timed("update", agent.update)
    records = RunDir.create(workdir / f"{algo}-seed{seed}",
                            {"run": dataclasses.asdict(run), "agent": dataclasses.asdict(config)})
    protocol = Protocol(algo, seed, agent, clock, args.threshold, args.verbose)
    stop = SimpleNamespace(requested=False)  # the loop stops at the end of the rollout once this is set

    def evaluate_at(step: int) -> float:
        mean = protocol(step)
        stop.requested = protocol.solved
        return mean

    def checkpoint(loop_state: dict[str, Any], replay: dict[str, Any] | None) -> None:
        records.save_checkpoint({"agent": agent.state_dict(), "torch_rng": torch.get_rng_state(),
                                 "loop": loop_state}, replay)

    context = LoopContext(agent=agent, env_fn=lambda: TimedEnv(make_run_env(run, config), clock.parts),
                          records=records, seed=run.seed, total_steps=run.total_steps, eval_every=run.eval_every,
                          checkpoint_every=run.checkpoint_every, evaluate=evaluate_at,
                          checkpoint=clock.timed("ckpt", checkpoint), stop=stop, stop_at=None,
                          progress=_NullBar())
    clock.start = time.perf_counter()
    LOOPS[agent.loop](context)
    return protocol.row(), {**dataclasses.asdict(config), "parameters": agent.num_parameters()}


class SB3Policy:
    """A RecurrentPPO model with the interface ``companion.train.evaluate`` uses: the most likely action,
    carrying the LSTM state, with ``episode_start`` set on the first step (as ``evaluate_policy`` does)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def initial_state(self) -> tuple[Any, bool]:
        return None, True

    def act(self, obs: np.ndarray, state: tuple[Any, bool], epsilon: float,
            rng: np.random.Generator) -> tuple[int, Any]:
        lstm, start = state
        normalize = self.model.get_vec_normalize_env()
        if normalize is not None:  # the running statistics of training, frozen here
            obs = normalize.normalize_obs(obs)
        action, lstm = self.model.predict(obs, state=lstm, episode_start=np.array([start]), deterministic=True)
        return int(action), (lstm, False)


def _rl_zoo_recurrent_ppo(seed: int, clock: Clock) -> Any:
    """RecurrentPPO with RL-Zoo's ``ppo_lstm.yml`` CartPoleNoVel-v1 entry (its ``lin_`` schedules as callables of
    SB3's progress_remaining; ``normalize: True`` as VecNormalize of observations and rewards)."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    envs = VecNormalize(DummyVecEnv([lambda: TimedEnv(make_env(ENV_ID), clock.parts) for _ in range(8)]),
                        gamma=0.98)
    kwargs = dict(ortho_init=False, activation_fn=torch.nn.ReLU, lstm_hidden_size=64, enable_critic_lstm=True,
                  net_arch=dict(pi=[64], vf=[64]))
    return RecurrentPPO("MlpLstmPolicy", envs, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                        ent_coef=0.0, learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p,
                        policy_kwargs=kwargs, seed=seed, device="cpu", verbose=0)


def run_sb3(seed: int, args: argparse.Namespace, zoo: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """One RecurrentPPO run, with its defaults or (``zoo``) RL-Zoo's settings; evaluations from a callback,
    which stops it once solved."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    clock = Clock()
    if zoo:
        model = _rl_zoo_recurrent_ppo(seed, clock)
    else:
        model = RecurrentPPO("MlpLstmPolicy", TimedEnv(make_env(ENV_ID), clock.parts), seed=seed, device="cpu",
                             verbose=0)
    policy = model.policy  # acting while collecting: forward, and predict_values for the bootstraps
    policy.forward = clock.timed("act", policy.forward)
    policy.predict_values = clock.timed("act", policy.predict_values)
    model.train = clock.timed("update", model.train)
    protocol = Protocol("sb3-zoo" if zoo else "sb3", seed, SB3Policy(model), clock, args.threshold, args.verbose)

    class Evaluations(BaseCallback):
        """Evaluate at the start of the first rollout at or after each multiple of ``eval_every``: the policy of
        the update just made, as the companion's loop does after its update. Stop at the next step once solved."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval, self.last_eval = args.eval_every, -1

        def _evaluate(self) -> None:
            step = self.model.num_timesteps
            protocol(step)
            self.last_eval, self.next_eval = step, next_multiple(step, args.eval_every)

        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps >= self.next_eval:
                self._evaluate()

        def _on_step(self) -> bool:
            return not protocol.solved

        def _on_training_end(self) -> None:  # the step cap: evaluate the last update's policy
            if not protocol.solved and self.last_eval != self.model.num_timesteps:
                self._evaluate()

    clock.start = time.perf_counter()
    model.learn(total_timesteps=args.max_steps, callback=Evaluations())
    settings = {"policy": "MlpLstmPolicy", "rl_zoo_cartpole_novel": zoo, "n_envs": model.n_envs,
                "n_steps": model.n_steps,
                "batch_size": model.batch_size, "n_epochs": model.n_epochs, "gamma": model.gamma,
                "gae_lambda": model.gae_lambda, "lstm_hidden_size": int(policy.lstm_hidden_state_shape[-1]),
                "parameters": sum(p.numel() for p in policy.parameters())}
    return protocol.row(), settings


def versions() -> dict[str, str | None]:
    import companion

    found: dict[str, str | None] = {"companion": companion.__version__, "torch": torch.__version__}
    for package in ("sb3-contrib", "stable-baselines3", "gymnasium", "popgym", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def median(rows: list[dict[str, Any]], key: str) -> float:
    """Median over seeds; an unsolved run's time or steps to solve count as infinite."""
    values = [r[key] if r["solved"] or key == "steps_per_s" else float("inf") for r in rows]
    return float(np.median(values)) if values else float("nan")


def show(x: float, fmt: str) -> str:
    return "unsolved" if np.isinf(x) else format(x, fmt)


def finite(x: float) -> float | None:
    """``x`` for JSON: ``None`` where it is infinite or nan."""
    return float(x) if np.isfinite(x) else None


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'algo':9s} {'seed':>4s} {'solved':>6s} {'steps':>7s} {'train s':>8s} {'eval s':>7s} {'steps/s':>8s} "
          f"{'return':>6s} | % of train s: " + " ".join(f"{p:>6s}" for p in (*PARTS, "other")))
    for r in rows:
        shares = " ".join(f"{100 * r[f'{p}_s'] / r['train_s']:5.1f}%" for p in (*PARTS, "other"))
        print(f"{r['algo']:9s} {r['seed']:4d} {'yes' if r['solved'] else 'no':>6s} {r['steps']:7d} "
              f"{r['train_s']:8.1f} {r['eval_s']:7.1f} {r['steps_per_s']:8.1f} {r['final_return']:6.3f} | "
              f"{'':13s} {shares}")


def summarise(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Medians per algo, and each companion agent's ratios against RecurrentPPO, printed; both returned."""
    by_algo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_algo[r["algo"]].append(r)
    medians: dict[str, dict[str, Any]] = {}
    print(f"\nmedians over seeds (an unsolved run counts as infinite)\n{'algo':9s} {'solved':>6s} {'steps':>9s} "
          f"{'train s':>9s} {'steps/s':>8s} | us per env step: " + " ".join(f"{p:>6s}" for p in (*PARTS, "other")))
    for algo, group in by_algo.items():
        per_step = {p: round(float(np.median([1e6 * r[f"{p}_s"] / r["steps"] for r in group])), 1)
                    for p in (*PARTS, "other")}
        medians[algo] = {"solved": sum(r["solved"] for r in group), "seeds": len(group),
                         "steps": median(group, "steps"), "train_s": median(group, "train_s"),
                         "steps_per_s": median(group, "steps_per_s"), "us_per_step": per_step}
        m = medians[algo]
        print(f"{algo:9s} {m['solved']:>3d}/{m['seeds']:<2d} {show(m['steps'], '9.0f'):>9s} "
              f"{show(m['train_s'], '9.1f'):>9s} {m['steps_per_s']:8.1f} | {'':17s}"
              + " ".join(f"{per_step[p]:6.0f}" for p in (*PARTS, "other")))
    ratios: dict[str, Any] = {}
    for reference in ("sb3", "sb3-zoo"):
        if reference not in medians:
            continue
        ref = medians[reference]
        ratios[reference] = {}
        goals = f"goals for {' and '.join(GOAL_ALGOS)}: " if reference == "sb3" else "no goals, like for like: "
        print(f"\nagainst RecurrentPPO ({reference}), medians ({goals}time ratio <= {GOALS['time_ratio']}, speed "
              f"ratio >= {GOALS['speed_ratio']}); time ratio = steps ratio / speed ratio")
        for algo, m in medians.items():
            if algo.startswith("sb3"):
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                time_ratio = np.float64(m["train_s"]) / ref["train_s"]
                steps_ratio = np.float64(m["steps"]) / ref["steps"]
            speed_ratio = m["steps_per_s"] / ref["steps_per_s"]
            time_ok = bool(time_ratio <= GOALS["time_ratio"])  # nan (neither solved) is a miss
            speed_ok = bool(speed_ratio >= GOALS["speed_ratio"])
            time_short, speed_short = time_ratio / GOALS["time_ratio"], GOALS["speed_ratio"] / speed_ratio
            ratios[reference][algo] = {"time_ratio": finite(time_ratio), "steps_ratio": finite(steps_ratio),
                            "speed_ratio": speed_ratio, "time_goal_met": time_ok, "speed_goal_met": speed_ok,
                            "time_short_by": None if time_ok else finite(time_short),
                            "speed_short_by": None if speed_ok else speed_short,
                                       "goal_set": algo in GOAL_ALGOS and reference == "sb3"}
            if np.isnan(time_ratio):
                time_verdict = "MISS: neither solved within the cap"
            elif np.isinf(time_ratio):
                time_verdict = "MISS: unsolved within the cap"
            elif np.isinf(ref["train_s"]):
                time_verdict = "pass: RecurrentPPO unsolved within the cap"
            else:
                time_verdict = "pass" if time_ok else f"MISS, {time_short:.2f}x too slow"
            speed_verdict = "pass" if speed_ok else f"MISS, {speed_short:.2f}x too few"
            print(f"{algo:9s} time ratio {time_ratio:6.3f} ({time_verdict}) = steps ratio {steps_ratio:6.3f} / "
                  f"speed ratio {speed_ratio:5.2f}x ({speed_verdict})"
                  + ("" if algo in GOAL_ALGOS and reference == "sb3" else "  [no goal]"))
    for m in medians.values():  # for JSON: unsolved medians as null
        m["steps"], m["train_s"] = finite(m["steps"]), finite(m["train_s"])
    return medians, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="+", default=["ppo-lstm", "ppo-attn", "sb3", "sb3-zoo"],
                        choices=[*ON_POLICY, "sb3", "sb3-zoo"],
                        help="companion on-policy agents; sb3 (RecurrentPPO's defaults), sb3-zoo (RL-Zoo's settings)")
    parser.add_argument("--max-steps", type=int, default=200_000, help="step cap of every run")
    parser.add_argument("--eval-every", type=int, default=2_048, help="env steps between evaluations")
    parser.add_argument("--threshold", type=float, default=0.9, help="mean evaluation return that solves the task")
    parser.add_argument("--verbose", action="store_true", help="print every evaluation")
    parser.add_argument("--save", action="store_true", help="write results/benchmarks/recurrent_ppo.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = versions()
    print(f"{ENV_ID}: solved at mean return >= {args.threshold} over {EVAL_EPISODES} episodes, evaluated every "
          f"{args.eval_every} steps, cap {args.max_steps} steps; " + ", ".join(f"{k} {v}" for k, v in found.items())
          + f"; {torch.get_num_threads()} torch thread", flush=True)
    rows: list[dict[str, Any]] = []
    settings: dict[str, Any] = {"env_id": ENV_ID, "seeds": args.seeds, "algos": args.algos,
                                "max_steps": args.max_steps, "eval_every": args.eval_every,
                                "eval_episodes": EVAL_EPISODES, "threshold": args.threshold, "agents": {}}
    with tempfile.TemporaryDirectory(prefix="recurrent_ppo-") as workdir:
        for seed in args.seeds:
            for algo in args.algos:
                if algo.startswith("sb3"):
                    row, settings["agents"][algo] = run_sb3(seed, args, zoo=algo == "sb3-zoo")
                else:
                    row, settings["agents"][algo] = run_companion(algo, seed, args, Path(workdir))
                rows.append(row)
                print(f"{algo} seed {seed}: {'solved' if row['solved'] else 'not solved'} at {row['steps']} steps, "
                      f"{row['train_s']:.1f} s training, {row['eval_s']:.1f} s evaluating, "
                      f"{row['steps_per_s']:.1f} steps/s", flush=True)
    print_rows(rows)
    medians, ratios = summarise(rows)
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("recurrent_ppo", rows, "cpu", out, medians=medians, ratios=ratios,
                                      goals=GOALS, versions=found, settings=settings))


if __name__ == "__main__":
    main()
