"""Comparisons across agents and tasks with reliable statistics (book chapter 8).

Chapter 8 puts the course's agents side by side on the tasks they share, from the runs the chapters stored under
``results/``. Three steps, each a function here:

1. **Scores.** A run's score is the mean return of its last evaluation (:func:`final_score`). A task's scores are
   normalised so that a uniformly random policy scores 0 and the best known score 1 (:func:`random_score`,
   :func:`normalise`): returns of different tasks become comparable, and 1 means "as good as known".
2. **Aggregates with uncertainty.** Following Agarwal et al. (2021), *Deep reinforcement learning at the edge of
   the statistical precipice*: the interquartile mean (IQM) of all runs on all tasks, the optimality gap, and
   their 95% confidence intervals from a *stratified* bootstrap (runs resampled with replacement within each
   task), computed by their library ``rliable`` (:func:`interval_estimates`); performance profiles, the fraction
   of runs above each normalised score tau (:func:`performance_profiles`); the probability of improvement
   P(X > Y) (:func:`improvement_probabilities`).
3. **Cost.** Parameters, milliseconds per update and wall time per run (:func:`wall_times`).

A score matrix has shape ``(runs, tasks)``: one row per seed, one column per task, as ``rliable`` takes it. An
agent enters an aggregate only where it has a finished run for every task and seed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "Task",
    "Contender",
    "Suite",
    "VARIANT_KEYS",
    "POMDP_SUITE",
    "MINATAR_SUITE",
    "final_score",
    "find_run",
    "score_matrix",
    "random_score",
    "normalise",
    "iqm",
    "optimality_gap",
    "interval_estimates",
    "performance_profiles",
    "improvement_probabilities",
    "verdict",
    "wall_times",
]


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a comparison: where its runs live, and the two scores that normalise it.

    Attributes:
        name: the label in tables and figures.
        env_id: the gymnasium id the runs trained on.
        folder: the env's folder in a run's path, ``results/<experiment>/<variant>/<folder>/seed<N>``.
        steps: environment steps of every run on this task (a run with fewer is not finished).
        best: the best known score (normalised to 1).
        best_source: where ``best`` comes from (a task's maximum, or a stated reference).
        hide: observation dimensions hidden, as ``train --hide``.
        flicker: probability of a blank observation, as ``train --flicker``.
    """

    name: str
    env_id: str
    folder: str
    steps: int
    best: float
    best_source: str
    hide: tuple[int, ...] = ()
    flicker: float = 0.0


@dataclasses.dataclass(frozen=True)
class Contender:
    """An agent as the comparison names it.

    Attributes:
        label: the label in tables and figures (``"SA-DQN"``).
        variant: its run folder, ``results/<experiment>/<variant>/...`` (``"sadqn"``, ``"ppo-attn-critic"``).
        family: ``"Q-learning"`` or ``"actor-critic"``.
        memory: what it remembers the past with (``"none"``, ``"4 stacked observations"``, ``"LSTM"``,
            ``"self-attention over 16 steps"``, ...).
        baseline: the label of the agent it differs from only by attention, where there is one; the pair
            enters the "when does attention help" table.
        algo: the ``train --algo`` it runs (default: ``variant``).
        overrides: the ``--set`` overrides that make the variant, as (key, value) pairs.
    """

    label: str
    variant: str
    family: str
    memory: str
    baseline: str | None = None
    algo: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()

    def benchmark(self, rows: Iterable[Mapping], env_ids: Sequence[str]) -> Mapping | None:
        """The first benchmark row (``results/benchmarks/*.json``: ``algo``, ``env_id``, ``overrides``) of this
        agent on one of ``env_ids``, in that order of preference; None if there is none. A row matches when its
        algorithm is this agent's and its overrides agree on the keys that make a variant
        (:data:`VARIANT_KEYS`); others (a batch size equal to the preset's) do not matter."""
        rows = list(rows)
        mine = {key: value for key, value in self.overrides if key in VARIANT_KEYS}
        for env_id in env_ids:
            for row in rows:
                theirs = {key: value for key, value in (row.get("overrides") or {}).items() if key in VARIANT_KEYS}
                if row.get("algo") == (self.algo or self.variant) and row.get("env_id") == env_id and theirs == mine:
                    return row
        return None


#: The ``--set`` overrides that make a variant of an algorithm (DQN-stack4, DARQN-soft, PPO-attn-critic), the
#: ones :meth:`Contender.benchmark` compares.
VARIANT_KEYS = ("frame_stack", "attention", "attend")


@dataclasses.dataclass(frozen=True)
class Suite:
    """Tasks, the agents compared on all of them, and where their runs are.

    Attributes:
        name: the suite's label.
        tasks: its tasks (the columns of every score matrix).
        contenders: its agents.
        experiments: ``results/`` folders searched for each cell, in order; a cell stored in two is an error.
        seeds: the seeds every cell must have (the rows of every score matrix).
        pairs: (attention agent, its baseline, what differs) for the "when does attention help" table.
    """

    name: str
    tasks: tuple[Task, ...]
    contenders: tuple[Contender, ...]
    experiments: tuple[str, ...]
    seeds: tuple[int, ...]
    pairs: tuple[tuple[str, str, str], ...]

    def contender(self, label: str) -> Contender:
        """The contender called ``label``."""
        for contender in self.contenders:
            if contender.label == label:
                return contender
        raise KeyError(f"{label!r} is not in {self.name}; it has {[c.label for c in self.contenders]}")

    def raw_scores(self, root: str | Path) -> dict[str, np.ndarray]:
        """label -> raw final scores ``(len(seeds), len(tasks))``, NaN where a run is missing."""
        return {c.label: score_matrix(root, self.experiments, c.variant, self.tasks, self.seeds)
                for c in self.contenders}

    def sources(self, root: str | Path) -> dict[str, list[str]]:
        """label -> for each task, ``"<experiment> k/n"`` (k of the n seeds found there) or ``"-"``."""
        table = {}
        for contender in self.contenders:
            row = []
            for task in self.tasks:
                found = [find_run(root, self.experiments, contender.variant, task, seed) for seed in self.seeds]
                where = sorted({run_dir.parents[2].name for run_dir in found if run_dir is not None})
                count = sum(run_dir is not None for run_dir in found)
                row.append(f"{'+'.join(where)} {count}/{len(self.seeds)}" if where else "-")
            table[contender.label] = row
        return table

    def wall_times(self, root: str | Path, task: str | None = None) -> dict[str, dict[str, float]]:
        """label -> :func:`wall_times` of its finished runs in this suite (on the task named ``task`` only, if
        given)."""
        return {c.label: wall_times(self.run_dirs(root, c.label, task)) for c in self.contenders}

    def costs(self, root: str | Path, rows: Iterable[Mapping], env_ids: Sequence[str], task: str,
              ) -> list[dict[str, object]]:
        """One dict per contender: ``label``, ``parameters``, ``ms`` per update, its FLOP ``bound_ms`` and their
        ``ratio`` as the benchmark computed it (from
        the first benchmark row of :meth:`Contender.benchmark` on ``env_ids``; None where none is stored), and the
        median ``wall`` seconds of its ``runs`` on the task named ``task`` (NaN where there are none), with
        ``shared``: True where one of those runs is this chapter's (``ch8-*``), made while other work shared the
        machine (their wall times are inflated)."""
        rows = list(rows)
        table = []
        for contender in self.contenders:
            row = contender.benchmark(rows, env_ids) or {}
            run_dirs = self.run_dirs(root, contender.label, task)
            table.append({"label": contender.label, "parameters": row.get("parameters"),
                          "ms": row.get("ms", row.get("ms_per_update")), "bound_ms": row.get("bound_ms"),
                          "ratio": row.get("ratio"),
                          "wall": wall_times(run_dirs)["median"], "runs": len(run_dirs),
                          "shared": any(d.parents[2].name.startswith("ch8") for d in run_dirs)})
        return table

    def best_scores(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each task's best score ``(tasks,)``: ``Task.best``, or where that is NaN, the highest mean over seeds
        of any contender in ``raw`` (label -> raw scores, as :meth:`raw_scores`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a task no contender has finished: NaN
            means = np.array([np.nanmean(matrix, axis=0) for matrix in raw.values()])  # (contenders, tasks)
            here = np.nanmax(means, axis=0)
        return np.array([task.best if not math.isnan(task.best) else here[j] for j, task in enumerate(self.tasks)])

    def run_dirs(self, root: str | Path, label: str, task: str | None = None) -> list[Path]:
        """Every finished run of ``label`` in this suite (on the task named ``task`` only, if given)."""
        variant = self.contender(label).variant
        tasks = [t for t in self.tasks if task is None or t.name == task]
        if not tasks:
            raise KeyError(f"no task {task!r} in {self.name}")
        found = (find_run(root, self.experiments, variant, t, seed) for t in tasks for seed in self.seeds)
        return [run_dir for run_dir in found if run_dir is not None]


_CARTPOLE = "CartPole-v1's episode limit: 500 steps at reward 1"
_POPGYM = "popgym's maximum return, 1 (Morad et al. 2023)"
_CUE = "a correct recall every episode (companion.memory_tasks)"

#: Chapter 8's first suite: the five small partially observable tasks of chapters 2-5 and 7, and the eleven
#: agents that run on vector observations.
POMDP_SUITE = Suite(
    name="partially observable control",
    tasks=(
        Task("CartPole, velocities hidden", "CartPole-v1", "CartPole-v1-hide1_3", 100_000, 500.0, _CARTPOLE,
             hide=(1, 3)),
        Task("CartPole, flicker 0.5", "CartPole-v1", "CartPole-v1-flicker0.5", 100_000, 500.0, _CARTPOLE,
             flicker=0.5),
        Task("RepeatPrevious", "popgym-RepeatPreviousEasy-v0", "popgym-RepeatPreviousEasy-v0", 100_000, 1.0,
             _POPGYM),
        Task("PositionOnlyCartPole", "popgym-PositionOnlyCartPoleEasy-v0", "popgym-PositionOnlyCartPoleEasy-v0",
             100_000, 1.0, _POPGYM),
        Task("CueRecall, delay 16", "CueRecall-D16-v0", "CueRecall-D16-v0", 36_000, 1.0, _CUE),
    ),
    contenders=(
        Contender("DQN", "dqn", "Q-learning", "none"),
        Contender("DQN-stack4", "dqn-stack4", "Q-learning", "4 stacked observations", algo="dqn",
                  overrides=(("frame_stack", 4),)),
        Contender("DRQN", "drqn", "Q-learning", "LSTM"),
        Contender("SA-DQN", "sadqn", "Q-learning", "self-attention over 16 steps", baseline="DRQN"),
        Contender("PPO", "ppo", "actor-critic", "none"),
        Contender("PPO-stack4", "ppo-stack4", "actor-critic", "4 stacked observations", algo="ppo",
                  overrides=(("frame_stack", 4),)),
        Contender("PPO-LSTM", "ppo-lstm", "actor-critic", "LSTM"),
        Contender("PPO-attn", "ppo-attn", "actor-critic", "self-attention over 16 steps", baseline="PPO-LSTM"),
        Contender("PPO-attn-critic", "ppo-attn-critic", "actor-critic", "critic only: self-attention over 16 steps",
                  baseline="PPO", algo="ppo-attn", overrides=(("attend", "critic"),)),
        Contender("PPO-memory", "ppo-memory", "actor-critic", "key-value memory of the episode",
                  baseline="PPO-LSTM"),
        Contender("PPO-hmemory", "ppo-hmemory", "actor-critic", "hierarchical memory: chunks, then steps",
                  baseline="PPO-memory"),
    ),
    experiments=("ch2-pomdp", "ch3-pomdp", "ch4-delay", "ch5-delay", "ch7-popgym", "ch8-pomdp", "ch8-delay"),
    seeds=(0, 1, 2),
    pairs=(
        ("SA-DQN", "DRQN", "self-attention over the last 16 steps instead of an LSTM"),
        ("SA-DQN", "DQN-stack4", "a learned read of 16 steps instead of 4 stacked"),
        ("PPO-attn", "PPO-LSTM", "self-attention over the last 16 steps instead of an LSTM"),
        ("PPO-attn-critic", "PPO", "an attention critic; the same memoryless actor"),
        ("PPO-memory", "PPO-LSTM", "an attention read of the whole episode instead of an LSTM"),
        ("PPO-hmemory", "PPO-memory", "a two-level read (top-2 chunks of 16) instead of a flat one"),
    ),
)

#: Chapter 8's second suite: chapter 6's MinAtar tasks at 50k steps and the six Q-learning agents that read
#: frames.
MINATAR_SUITE = Suite(
    name="MinAtar, 50k steps",
    tasks=tuple(
        Task(name, f"MinAtar/{game}-v1", folder, 50_000, math.nan, "the best agent's mean here (no known maximum)",
             flicker=flicker)
        for name, game, folder, flicker in (("Breakout", "Breakout", "Breakout", 0.0),
                                            ("Seaquest", "Seaquest", "Seaquest", 0.0),
                                            ("Breakout, flicker 0.5", "Breakout", "Breakout-flicker0.5", 0.5))
    ),
    contenders=(
        Contender("DQN-stack4", "dqn-stack4", "Q-learning", "4 stacked frames", algo="dqn",
                  overrides=(("frame_stack", 4),)),
        Contender("DRQN", "drqn", "Q-learning", "LSTM"),
        Contender("DARQN-soft", "darqn-soft", "Q-learning", "LSTM + soft attention over 8x8 cells",
                  baseline="DRQN", algo="darqn", overrides=(("attention", "soft"),)),
        Contender("DARQN-hard", "darqn-hard", "Q-learning", "LSTM + hard attention over 8x8 cells",
                  baseline="DRQN", algo="darqn", overrides=(("attention", "hard"),)),
        Contender("SA-DQN", "sadqn", "Q-learning", "self-attention over 8 frames", baseline="DRQN"),
        Contender("SA-DQN-entity", "sadqn-entity", "Q-learning", "none: self-attention over one frame's 8x8 cells",
                  baseline="DQN-stack4"),
    ),
    experiments=("ch6-minatar",),
    seeds=(0, 1, 2),
    pairs=(
        ("DARQN-soft", "DRQN", "soft attention over the CNN's cells before the LSTM"),
        ("DARQN-hard", "DRQN", "hard (sampled) attention over the cells before the LSTM"),
        ("SA-DQN", "DRQN", "self-attention over the last 8 frames instead of an LSTM"),
        ("SA-DQN-entity", "DQN-stack4", "self-attention over one frame's cells, not a CNN head on 4 frames"),
    ),
)


def final_score(run_dir: str | Path, steps: int | None = None) -> float:
    """The mean return of a run's last evaluation (its ``eval.csv``).

    Args:
        run_dir: a run directory with ``eval.csv`` and ``meta.json``.
        steps: if given, the run must have reached this many environment steps (at most 1% short: on-policy
            runs stop at a whole rollout) and its meta.json must say it was not interrupted.

    Raises:
        FileNotFoundError: no evaluation stored.
        ValueError: the run is unfinished.
    """
    run_dir = Path(run_dir)
    with open(run_dir / "eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no evaluation in eval.csv")
    last = rows[-1]
    if steps is not None:
        meta = json.loads((run_dir / "meta.json").read_text())
        if meta.get("interrupted", True) or int(last["step"]) < 0.99 * steps:
            raise ValueError(f"{run_dir}: unfinished (last evaluation at step {last['step']} of {steps})")
    return float(last["mean_return"])


def find_run(root: str | Path, experiments: Sequence[str], variant: str, task: Task, seed: int) -> Path | None:
    """The finished run of ``variant`` on ``task`` with ``seed`` among ``experiments``, or None.

    Raises:
        ValueError: two experiments hold the same cell (the comparison would have to choose between them).
    """
    found = []
    for experiment in experiments:
        run_dir = Path(root) / experiment / variant / task.folder / f"seed{seed}"
        if (run_dir / "eval.csv").is_file():
            try:
                final_score(run_dir, task.steps)
            except (ValueError, FileNotFoundError):  # unfinished, or in progress (no evaluation or meta.json yet)
                continue
            found.append(run_dir)
    if len(found) > 1:
        raise ValueError(f"{variant} on {task.name}, seed {seed}: stored twice ({', '.join(map(str, found))})")
    return found[0] if found else None


def score_matrix(root: str | Path, experiments: Sequence[str], variant: str, tasks: Sequence[Task],
                 seeds: Sequence[int]) -> np.ndarray:
    """Raw final scores, shape ``(len(seeds), len(tasks))``; NaN where no finished run is stored."""
    scores = np.full((len(seeds), len(tasks)), np.nan)
    for j, task in enumerate(tasks):
        for i, seed in enumerate(seeds):
            run_dir = find_run(root, experiments, variant, task, seed)
            if run_dir is not None:
                scores[i, j] = final_score(run_dir, task.steps)
    return scores


def random_score(task: Task, episodes: int = 100, seed: int = 0, max_steps: int = 100_000) -> float:
    """Mean return of a uniformly random policy on ``task`` (with its hidden dimensions and flicker).

    The score that normalises to 0. ``episodes`` episodes from ``reset(seed=seed)``, actions from the action
    space seeded with ``seed``; ``max_steps`` caps an episode that never ends (none does on the course's tasks).
    """
    from companion.envs import make_env  # here, so that reading scores needs no gymnasium

    env = make_env(task.env_id, hide=task.hide or None, flicker=task.flicker)
    env.action_space.seed(seed)
    returns = []
    env.reset(seed=seed)
    for _ in range(episodes):
        total, done, steps = 0.0, False, 0
        env.reset()
        while not done and steps < max_steps:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done, steps = total + float(reward), terminated or truncated, steps + 1
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def normalise(scores: np.ndarray, random: Sequence[float], best: Sequence[float]) -> np.ndarray:
    """``(score - random) / (best - random)`` per task (the last axis): random play 0, the best known 1."""
    random_, best_ = np.asarray(random, dtype=float), np.asarray(best, dtype=float)
    if np.any(best_ <= random_):
        raise ValueError("every task's best score must exceed its random score")
    return (np.asarray(scores, dtype=float) - random_) / (best_ - random_)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of ALL runs on all tasks pooled: the mean of the middle 50% of the values.

    Pooled, not per task: a ``(runs, tasks)`` matrix is flattened first, sorted, and ``floor(n / 4)`` values are
    dropped from each end (as ``scipy.stats.trim_mean(x, 0.25)``, which ``rliable`` uses: with ``n`` not a
    multiple of 4 a little more than half the values are kept).
    """
    values = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = len(values) // 4
    return float(np.mean(values[cut:len(values) - cut]))


def optimality_gap(scores: np.ndarray, threshold: float = 1.0) -> float:
    """How far runs fall short of ``threshold``, on average: ``mean(max(threshold - score, 0))``.

    Scores above the threshold count as the threshold: a run beyond "as good as known" makes up for no other
    run's shortfall, which the mean score allows.
    """
    return float(np.mean(np.maximum(threshold - np.asarray(scores, dtype=float), 0.0)))


@contextlib.contextmanager
def _seeded_bootstrap(seed: int):
    """Make rliable's bootstrap reproducible, and leave numpy's global generator as it was.

    rliable 1.2 draws its resamples with ``np.random.choice``, numpy's *global* generator, whatever
    ``random_state`` it is given (that only reaches arch, which warns that it is deprecated). So the global
    generator is seeded here, and its state restored afterwards.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _rliable():
    try:
        from rliable import library, metrics
    except ImportError as error:  # pragma: no cover - rliable is a dependency
        raise ImportError("chapter 8's statistics need rliable: pip install rliable") from error
    return library, metrics


def interval_estimates(scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0,
                       ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """IQM, mean, median and optimality gap of each agent's normalised scores, with 95% stratified-bootstrap CIs.

    As ``rliable`` defines them: the IQM and the optimality gap pool all runs of all tasks; the mean is the
    mean of the per-task means; the median is the median of the per-task means (over tasks, not runs).

    Args:
        scores: agent -> normalised scores ``(runs, tasks)``, no NaN.
        reps: bootstrap resamples (Agarwal et al. use 50,000; 2,000 keeps the book's cells quick).
        seed: seeds the bootstrap (numpy's global generator, restored afterwards: see ``_seeded_bootstrap``),
            once per call: the agents draw their resamples one after the other, so an agent's interval can
            differ slightly with the other agents in the same call.

    Returns:
        agent -> metric (``"IQM"``, ``"mean"``, ``"median"``, ``"optimality gap"``) -> (estimate, low, high).
    """
    library, metrics = _rliable()
    names = ("IQM", "mean", "median", "optimality gap")

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x)])

    for agent, matrix in scores.items():
        if np.isnan(matrix).any():
            raise ValueError(f"{agent}: missing runs (NaN) in its score matrix")
    with _seeded_bootstrap(seed):
        point, interval = library.get_interval_estimates(dict(scores), aggregates, reps=reps)
    return {agent: {name: (float(point[agent][k]), float(interval[agent][0, k]), float(interval[agent][1, k]))
                    for k, name in enumerate(names)} for agent in scores}


def performance_profiles(scores: Mapping[str, np.ndarray], taus: np.ndarray, reps: int = 2000, seed: int = 0,
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fraction of runs (all tasks pooled) with normalised score above each ``tau``, with 95% bootstrap bands.

    Returns:
        agent -> (profile ``(len(taus),)``, band ``(2, len(taus))``: low and high).
    """
    library, _ = _rliable()
    with _seeded_bootstrap(seed):
        profile, band = library.get_interval_estimates(
            dict(scores), lambda x: library.score_distributions(x, taus), reps=reps)
    return {agent: (np.asarray(profile[agent]), np.asarray(band[agent])) for agent in scores}


def improvement_probabilities(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], reps: int = 2000, seed: int = 0,
                              ) -> dict[str, tuple[float, float, float]]:
    """P(X > Y) for each pair of score matrices, with 95% stratified-bootstrap CIs.

    The probability that a run of X on a task, drawn at random, scores above a run of Y on the same task (ties
    count one half: the Mann-Whitney U statistic divided by the number of run pairs), averaged over tasks
    (Agarwal et al. 2021). 0.5 means neither is better.

    Args:
        pairs: name -> (scores of X, scores of Y), each ``(runs, tasks)`` over the same tasks; the run counts
            may differ.

    Returns:
        name -> (estimate, low, high).
    """
    library, metrics = _rliable()
    with _seeded_bootstrap(seed):
        point, interval = library.get_interval_estimates(dict(pairs), metrics.probability_of_improvement,
                                                         reps=reps)
    return {name: (float(point[name]), float(interval[name][0, 0]), float(interval[name][1, 0])) for name in pairs}


def verdict(estimate: tuple[float, float, float]) -> str:
    """``"helps"`` when the CI of P(attention > baseline) lies above 0.5, ``"hurts"`` below, else ``"unclear"``."""
    _, low, high = estimate
    return "helps" if low > 0.5 else "hurts" if high < 0.5 else "unclear"


def wall_times(run_dirs: Iterable[str | Path]) -> dict[str, float]:
    """Median, min and max of ``wall_seconds`` over runs' meta.json, and how many runs: ``{"median": ...}``."""
    seconds = [json.loads((Path(d) / "meta.json").read_text())["wall_seconds"] for d in run_dirs]
    if not seconds:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": 0}
    return {"median": float(np.median(seconds)), "min": float(min(seconds)), "max": float(max(seconds)),
            "runs": len(seconds)}

