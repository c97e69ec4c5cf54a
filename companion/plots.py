"""Learning curves from run directories: the mean across seeds with a 95% confidence interval.

The interval is Student's t interval of the mean over seeds, ``mean ± t(0.975, n-1) · sd / sqrt(n)``:
with 3 to 5 seeds it is wide, honestly so. Every figure states the environment steps it covers.

Results of stored runs that several chapters lay out alike: :func:`summary_tables` (each task's table after
the random policy's return; chapters 6 and 7), and chapter 4's delay sweep, which chapter 5 extends:
:func:`plot_delay_sweep`, :func:`delay_sweep_table` and :func:`first_solved`. Chapter 8's comparisons:
:func:`plot_interval_estimates`, :func:`plot_performance_profiles` and :func:`plot_improvement` draw what
:mod:`companion.compare` computes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from companion.records import RunDir

__all__ = ["Curve", "aggregate", "compare_tasks", "delay_sweep_table", "finished_runs", "first_solved", "group_runs",
           "load_curve", "plot_curves", "plot_delay_sweep", "plot_improvement", "plot_interval_estimates",
           "plot_performance_profiles", "plot_value_ceiling", "stored_record", "summarize", "summary_table",
           "summary_tables", "t_interval", "update_summary"]

# t(0.975, df) for df = 1..30; beyond, the normal 1.96 is within 2%.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t-interval ``(mean, low, high)`` along ``axis``; a single value has a zero-width interval."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, mean, mean
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * values.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


class Curve:
    """One run's curve: ``steps`` and ``values`` arrays."""

    def __init__(self, steps: np.ndarray, values: np.ndarray) -> None:
        self.steps, self.values = np.asarray(steps, float), np.asarray(values, float)


def load_curve(run_dir: str | Path, kind: str = "eval", window: int = 10) -> Curve:
    """``kind="eval"``: mean evaluation return against steps. ``kind="train"``: the running mean of the
    last ``window`` training-episode returns against steps. ``kind="update:NAME"``: a training scalar from
    ``updates.csv`` (e.g. ``update:attention_entropy``), averaged over each 1k steps."""
    run = RunDir(run_dir)
    if kind.startswith("update:"):
        name, data = kind.split(":", 1)[1], run.updates()
        if name not in data:
            raise ValueError(f"{run.path} logged no {name!r}; it has: {', '.join(sorted(data)) or 'nothing'}")
        return Curve(data["step"], data[name])
    if kind == "eval":
        data = run.evals()
        return Curve(data["step"], data["mean_return"])
    if kind == "train":
        data = run.metrics()
        returns = data["return"]
        running = np.array([returns[max(0, i - window + 1): i + 1].mean() for i in range(len(returns))])
        return Curve(data["step"], running)
    raise ValueError(f"kind must be 'eval', 'train' or 'update:NAME', got {kind!r}")


def aggregate(curves: Sequence[Curve], grid: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Curves of several seeds on one step grid: ``(steps, mean, low, high, n)``.

    Without ``grid`` the steps common to all curves are used (evaluation steps are the same across
    seeds); training curves are interpolated onto ``grid``.
    """
    if not curves:
        raise ValueError("no curves to aggregate")
    if grid is None:
        grid = curves[0].steps
        for curve in curves[1:]:
            grid = np.intersect1d(grid, curve.steps)
        values = np.stack([c.values[np.searchsorted(c.steps, grid)] for c in curves])
    else:
        grid = np.asarray(grid, float)
        values = np.stack([np.interp(grid, c.steps, c.values, left=np.nan, right=np.nan) for c in curves])
    mean, low, high = t_interval(values)
    return grid, mean, low, high, len(curves)


def group_runs(run_dirs: Iterable[str | Path]) -> dict[str, list[Path]]:
    """Group run directories by what differs except the seed: ``"dqn CartPole-v1 hide=1,3"`` -> dirs.
    DARQN runs carry their attention: ``"darqn-soft MinAtar/Seaquest-v1"``."""
    groups: dict[str, list[Path]] = {}
    for path in run_dirs:
        config = RunDir(path).config()
        run, stack = config["run"], config["agent"].get("frame_stack", 1)
        algo = run["algo"] + (f"-{config['agent']['attention']}" if "attention" in config["agent"] else "")
        label = f"{algo}{f' stack{stack}' if stack > 1 else ''} {run['env_id']}"
        if run.get("hide"):
            label += " hide=" + ",".join(str(i) for i in run["hide"])
        if run.get("flicker"):
            label += f" flicker={run['flicker']}"
        groups.setdefault(label, []).append(Path(path))
    return groups


def plot_curves(groups: dict[str, Sequence[str | Path]], ax=None, kind: str = "eval", title: str | None = None):
    """Plot each group's mean curve with its 95% interval; the legend gives the number of seeds."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    max_step = 0.0
    for label, dirs in groups.items():
        curves = [load_curve(d, kind) for d in dirs]
        grid = None
        if kind == "train":
            last = min(c.steps[-1] for c in curves if len(c.steps))
            grid = np.linspace(0, last, 100)
        steps, mean, low, high, n = aggregate(curves, grid)
        (line,) = ax.plot(steps, mean, label=f"{label} ({n} seed{'s' if n > 1 else ''})")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        max_step = max(max_step, float(np.nanmax(steps)) if len(steps) else 0.0)
    ax.set_xlabel(f"environment steps (up to {max_step:,.0f})")
    ylabels = {"eval": "evaluation return", "train": "training return (mean of 10 episodes)"}
    ax.set_ylabel(ylabels.get(kind, kind.split(":")[-1].replace("_", " ")))
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax


def plot_value_ceiling(runs: dict[str, str | Path], ax=None, max_reward: float = 1.0):
    """Each run's mean Q-value on its replayed batches (``updates.csv``'s ``q``) against the ceiling that its
    target copies allow (:func:`companion.agents.base.target_copy_ceiling`, dashed, same colour), and the value
    of never failing, ``max_reward / (1 - gamma)`` (dotted). Book chapter 2.3.

    Args:
        runs: ``{label: run directory}`` of Q-learning runs that logged ``q``.
    """
    import matplotlib.pyplot as plt

    from companion.agents.base import target_copy_ceiling

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    gammas = set()
    for label, run in runs.items():
        record = RunDir(run)
        config, updates = record.config()["agent"], record.updates()
        if "q" not in updates:
            raise ValueError(f"{run} logged no Q-values (updates.csv has no 'q' column)")
        steps = np.concatenate([[0.0], updates["step"]])
        (line,) = ax.plot(updates["step"], updates["q"], label=f"{label}: mean Q")
        ceiling = target_copy_ceiling(steps, config["learning_starts"], config["target_update"], config["gamma"],
                                      max_reward)
        ax.plot(steps, ceiling, "--", color=line.get_color(),
                label=f"ceiling, a copy every {config['target_update']} steps")
        gammas.add(config["gamma"])
    for gamma in sorted(gammas):
        scale = "1" if max_reward == 1 else f"{max_reward:g}"
        ax.axhline(max_reward / (1 - gamma), color="gray", linestyle=":",
                   label=f"never failing: {scale}/(1-gamma) = {max_reward / (1 - gamma):.0f}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("Q-value")
    ax.legend(fontsize="small")
    return ax


def finished_runs(root: str | Path | None, pattern: str) -> list[Path]:
    """The run directories under ``root`` matching ``pattern`` (a glob, e.g. ``"ch2-pomdp/drqn/*/seed*"``)
    whose run finished (not interrupted: an interrupted run's meta.json also records when it stopped);
    none when ``root`` is ``None`` (no stored results, e.g. on Colab)."""
    if root is None:
        return []
    return [p for p in sorted(Path(root).glob(pattern))
            if "finished" in (meta := RunDir(p).meta()) and not meta.get("interrupted", False)]


def summarize(groups: dict[str, Sequence[str | Path]]) -> list[dict]:
    """One row per non-empty group: ``label``, ``n`` (seeds), ``final`` and ``mean`` (the last evaluation,
    and the mean over all evaluations, a summary of the whole curve), each ``(mean, low, high)`` over seeds
    with a 95% t-interval, and ``best`` (the best single evaluation of any seed). Seeds must share their
    evaluation steps."""
    rows = []
    for label, dirs in groups.items():
        if not dirs:
            continue
        curves = np.stack([RunDir(d).evals()["mean_return"] for d in dirs])  # (seeds, evaluations)
        rows.append({"label": label, "n": len(dirs), "final": t_interval(curves[:, -1]),
                     "mean": t_interval(curves.mean(axis=1)), "best": float(curves.max())})
    return rows


def summary_table(groups: dict[str, Sequence[str | Path]], digits: int = 2) -> str:
    """:func:`summarize` as a plain-text table, for a notebook to print."""
    width = max([len(label) for label in groups] + [5])

    def cell(interval: tuple) -> str:
        mean, low, high = (float(v) for v in interval)
        return f"{mean:8.{digits}f} [{low:8.{digits}f}, {high:8.{digits}f}]"

    header = f"{'agent':{width}s} n   final [95% interval]          mean over evals [95%]         best"
    lines = [header]
    for row in summarize(groups):
        lines.append(f"{row['label']:{width}s} {row['n']}  {cell(row['final'])}  {cell(row['mean'])}  "
                     f"{row['best']:7.{digits}f}")
    return "\n".join(lines)


def compare_tasks(tasks: dict[str, dict[str, Sequence[str | Path]]], *, kind: str = "eval", ylim: tuple | None = None,
                  width: float = 6.0, height: float = 3.8):
    """One panel per task, each agent's mean curve with its 95% interval (:func:`plot_curves`); agents without
    runs are left out. ``tasks``: ``{title: {agent label: run directories}}``. Returns the figure, or ``None``
    when no task has a run (no stored results, e.g. on Colab)."""
    import matplotlib.pyplot as plt

    present = {title: {k: v for k, v in groups.items() if v} for title, groups in tasks.items()}
    present = {title: groups for title, groups in present.items() if groups}
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(width * len(present), height), squeeze=False)
    for ax, (title, groups) in zip(axes[0], present.items(), strict=True):
        plot_curves(groups, ax=ax, kind=kind, title=title)
        if ylim:
            ax.set_ylim(*ylim)
    fig.tight_layout()
    return fig


def update_summary(groups: dict[str, Sequence[str | Path]], key: str, last: int = 10) -> dict[str, tuple]:
    """For each group, a training scalar of ``updates.csv`` (e.g. ``explained_variance``) averaged over each
    run's ``last`` rows (rows without a value, ``nan``, are skipped), then over seeds: ``(mean, low, high, n)``
    with a 95% t-interval. Groups with no run, or runs that never logged ``key``, are left out."""
    summary = {}
    for label, dirs in groups.items():
        values = []
        for d in dirs:
            column = RunDir(d).updates().get(key)
            if column is not None and np.isfinite(column[-last:]).any():
                values.append(float(np.nanmean(column[-last:])))
        if values:
            summary[label] = (*t_interval(np.array(values)), len(values))
    return summary


# Stored records: chapters 3 to 7 print measurements that a script stored beside the runs. ---------------


def stored_record(root: str | Path | None, name: str, folder: str = "benchmarks") -> dict[str, Any] | None:
    """A measurement stored as JSON beside the runs: a benchmark or a probe.

    Chapters 3 to 7 print what ``benchmarks/*.py`` and ``experiments/*.py`` stored as
    ``results/<folder>/<name>.json`` (chapter 3: ``recurrent_ppo``, and ``critic_probe`` in ``ch3-probe``),
    and say that nothing is stored where the results are not (on Colab without the clone).

    Args:
        root: The results folder, as :func:`companion.records.results_dir` finds it, or ``None``.
        name: The record's file name without ``.json``, e.g. ``"recurrent_ppo"``.
        folder: Its folder under ``root``, e.g. ``"benchmarks"`` or ``"ch3-probe"``.

    Returns:
        The record as a dict, or ``None`` when ``root`` is ``None`` or holds no such file.
    """
    if root is None:
        return None
    path = Path(root) / folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# Results tables and the delay sweep (chapters 4 to 7) ---------------------------------------------------


def summary_tables(tasks: dict[str, tuple[dict[str, Sequence[str | Path]], str, dict[str, Any]]],
                   episodes: int = 100) -> str:
    """One :func:`summary_table` per task, each after the random policy's mean return on that task.

    Chapter 6 compares DQN, DRQN and DARQN on three MinAtar tasks this way, and chapter 7 adds SA-DQN to the
    tasks of chapters 2 and 6: the random policy's return is the floor that each table is read against.

    Args:
        tasks: ``{title: (groups, env_id, env_kwargs)}``. ``groups`` maps each agent's label to its run
            directories, as :func:`summary_table` takes them (agents without runs are left out);
            the random policy plays ``make_env(env_id, **env_kwargs)``, e.g. ``env_kwargs={"flicker": 0.5}``.
        episodes: How many episodes the random policy plays on each task (from seed 0), by
            :func:`companion.train.random_return`.

    Returns:
        For each task, the line ``"<title>: random policy <mean return> (<episodes> episodes)"`` and then its
        table; each task's block ends with a blank line when printed.
    """
    from companion.train import random_return

    blocks = []
    for title, (groups, env_id, env_kwargs) in tasks.items():
        floor = random_return(env_id, episodes=episodes, **env_kwargs)
        present = {label: dirs for label, dirs in groups.items() if dirs}
        blocks.append(f"{title}: random policy {floor:.2f} ({episodes} episodes)\n{summary_table(present)}\n")
    return "\n".join(blocks)


def first_solved(run_dir: str | Path, level: float = 0.95) -> int | None:
    """How many episodes a run of chapter 4's ``CueRecall`` task had trained when it first succeeded.

    A decision pays +1 or -1, so an evaluation's success rate is ``(mean return + 1) / 2``. The step of the
    first evaluation whose success rate is at least ``level`` becomes episodes at the run's average episode
    length (``episodes / steps`` of its ``meta.json``). Chapters 4 and 5 count how long each memory took.

    Args:
        run_dir: A finished run directory (:class:`companion.records.RunDir`).
        level: The success rate that counts as solved.

    Returns:
        The number of episodes, rounded, or ``None`` if no evaluation reached ``level``.
    """
    run = RunDir(run_dir)
    evals, meta = run.evals(), run.meta()
    per_step = meta["episodes"] / meta["steps"]
    hits = [s for s, r in zip(evals["step"], evals["mean_return"], strict=True) if (r + 1) / 2 >= level]
    return round(hits[0] * per_step) if hits else None


def _sweep_delays(rates: dict[str, dict[int, Sequence[float]]]) -> list[int]:
    return sorted({delay for by_delay in rates.values() for delay in by_delay})


def plot_delay_sweep(rates: dict[str, dict[int, Sequence[float]]], ax=None, *, spread: float = 0.05,
                     dashed: Sequence[str] = (), chance_label: str = "chance"):
    """Success rate against the delay, one line per agent: the mean over seeds, its 95% interval, each seed.

    Chapter 4 sweeps the delay :math:`D` of its ``CueRecall`` task (a cue, :math:`D` corridor steps that look
    alike, then a decision) over agents with and without memory; chapter 5 adds the hierarchical memory.
    A success rate of 0.5 is chance (the dotted line). The delays are drawn on a log scale.

    Args:
        rates: ``{agent label: {delay: success rates}}``, one success rate in [0, 1] per seed (the chapters
            take the last evaluation's ``(return + 1) / 2``). A delay with no rates is skipped; the legend
            gives the number of seeds at the agent's first delay.
        ax: The matplotlib axes to draw on (default: a new figure's).
        spread: How far apart the agents' markers sit at one delay: agent ``i`` of ``n`` is drawn at
            ``D * (1 + spread * (i - (n - 1) / 2))``, so that the markers do not hide each other.
        dashed: The labels of the agents drawn with dashed lines (chapter 4: the off-policy agents).
        chance_label: The legend's name for the line at 0.5.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9.5, 4.5))
    delays = _sweep_delays(rates)
    middle = (len(rates) - 1) / 2
    for i, (label, by_delay) in enumerate(rates.items()):
        points = [(delay, list(values)) for delay, values in by_delay.items() if len(values)]
        if not points:
            continue
        x = np.array([delay for delay, _ in points], float) * (1 + spread * (i - middle))
        mean, low, high = (np.array(v) for v in zip(*[t_interval(np.array(values)) for _, values in points],
                                                    strict=True))
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o" + ("--" if label in dashed else "-"),
                    capsize=3, color=f"C{i}", label=f"{label} ({len(points[0][1])} seeds)")
        for xi, (_, values) in zip(x, points, strict=True):
            ax.plot([xi] * len(values), values, ".", color=f"C{i}", alpha=0.4)
    ax.axhline(0.5, color="grey", lw=1, ls=":", label=chance_label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(delays, [str(delay) for delay in delays])
    ax.set_xlabel("delay D (the cue is D + 1 steps before the decision)")
    ax.set_ylabel("success rate, last evaluation")
    ax.set_ylim(0.0, 1.05)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def delay_sweep_table(rates: dict[str, dict[int, Sequence[float]]], width: int | None = None,
                      level: float = 0.95) -> str:
    """The delay sweep of :func:`plot_delay_sweep` as a plain-text table, one row per agent.

    Each cell reads ``mean [low, high] k/n``: the mean success rate over seeds with its 95% t-interval, and
    how many of the ``n`` seeds ended at ``level`` or more (chapters 4 and 5); ``-`` where an agent has no
    run at that delay.

    Args:
        rates: ``{agent label: {delay: success rates}}``, one success rate per seed, as for
            :func:`plot_delay_sweep`.
        width: The width of the label column (default: the longest label plus one).
        level: The success rate at which a seed counts as having solved the task.

    Returns:
        The table: a header line, then one line per agent.
    """
    delays = _sweep_delays(rates)
    width = width if width is not None else max(len(label) for label in rates) + 1
    lines = [f"{'agent':{width}s}" + "".join(f"{'D = ' + str(delay):>24s}" for delay in delays)]
    for label, by_delay in rates.items():
        cells = []
        for delay in delays:
            values = np.array(by_delay.get(delay, ()), dtype=float)
            if len(values):
                mean, low, high = t_interval(values)
                cells.append(f"{mean:.2f} [{low:5.2f}, {high:.2f}] {int((values >= level).sum())}/{len(values)}")
            else:
                cells.append("-")
        lines.append(f"{label:{width}s}" + "".join(f"{cell:>24s}" for cell in cells))
    return "\n".join(lines)


def plot_interval_estimates(estimates: dict[str, dict[str, tuple[float, float, float]]],
                            metrics: Sequence[str] = ("IQM", "optimality gap"), axes=None, title: str | None = None):
    """Chapter 8's aggregate metrics: one panel per metric, one horizontal bar per agent (its 95% CI), a tick at
    the point estimate.

    Args:
        estimates: agent -> metric -> (estimate, low, high), as :func:`companion.compare.interval_estimates`
            returns.
        metrics: the metrics to draw, one panel each.
        axes: as many matplotlib axes as metrics (default: a new row of panels).
        title: put above the first panel.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.4 * len(estimates) + 1.2),
                               sharey=True)
    axes = np.atleast_1d(axes)
    agents = list(estimates)
    for ax, metric in zip(axes, metrics, strict=True):
        for row, agent in enumerate(agents):
            point, low, high = estimates[agent][metric]
            ax.barh(row, high - low, left=low, height=0.6, color=f"C{row % 10}", alpha=0.6)
            ax.plot([point, point], [row - 0.3, row + 0.3], color="black", linewidth=1.5)
        ax.set_yticks(range(len(agents)), agents)
        ax.set_xlabel(f"{metric} (normalised score)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    if title:
        axes[0].set_title(title, loc="left")
    return axes


def plot_performance_profiles(profiles: dict[str, tuple[np.ndarray, np.ndarray]], taus: np.ndarray, ax=None,
                              title: str | None = None):
    """Score distributions (chapter 8): for each tau, the fraction of runs with normalised score above tau, with
    its 95% bootstrap band (:func:`companion.compare.performance_profiles`)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for k, (agent, (profile, band)) in enumerate(profiles.items()):
        style = "-" if k < 10 else "--"
        (line,) = ax.plot(taus, profile, style, label=agent, color=f"C{k % 10}")
        ax.fill_between(taus, band[0], band[1], color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel(r"normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs with score $> \tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return ax


def plot_improvement(probabilities: dict[str, tuple[float, float, float]], ax=None, title: str | None = None):
    """P(X > Y) for each pair with its 95% CI (:func:`companion.compare.improvement_probabilities`); the dashed
    line at 0.5 is "neither is better"."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.45 * len(probabilities) + 1.2))
    for row, (point, low, high) in enumerate(probabilities.values()):
        ax.barh(row, high - low, left=low, height=0.6, color="C0", alpha=0.5)
        ax.plot([point, point], [row - 0.3, row + 0.3], color="black", linewidth=1.5)
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(probabilities)), list(probabilities))
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("P(X > Y): probability of improvement")
    if title:
        ax.set_title(title, loc="left")
    return ax
