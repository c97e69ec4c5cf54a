"""Chapter 8's comparisons (companion.compare): scores, normalisation, aggregates against rliable, the suites
against the stored runs and the grid that makes the missing ones, and the chapter's exercises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rliable import metrics

from companion import compare, exercises
from companion.compare import MINATAR_SUITE, POMDP_SUITE, Contender, Suite, Task
from companion.sweep import load_grid

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
CH8_GRIDS = ("ch8.toml", "ch8_hmemory.toml")  # chapter 8's own runs: the cells no earlier chapter ran


def make_run(root: Path, experiment: str, variant: str, folder: str, seed: int, returns: list[float],
             every: int = 50, interrupted: bool = False) -> Path:
    run_dir = root / experiment / variant / folder / f"seed{seed}"
    run_dir.mkdir(parents=True)
    lines = ["step,mean_return,std_return,episodes"]
    lines += [f"{every * (k + 1)},{value},0,10" for k, value in enumerate(returns)]
    (run_dir / "eval.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "meta.json").write_text(json.dumps({"interrupted": interrupted, "wall_seconds": 10.0 + seed}))
    return run_dir


TASK = Task("toy", "CartPole-v1", "CartPole-v1", 100, 500.0, "the limit")


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 4), (1, 7), (10, 1)])
def test_iqm_and_gap_equal_rliable(shape):
    scores = np.random.default_rng(sum(shape)).normal(0.5, 0.4, size=shape)
    assert compare.iqm(scores) == pytest.approx(metrics.aggregate_iqm(scores), abs=1e-12)
    assert compare.optimality_gap(scores) == pytest.approx(metrics.aggregate_optimality_gap(scores), abs=1e-12)


def test_iqm_pools_runs_and_tasks():
    scores = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])  # 8 values: drop 2 at each end
    assert compare.iqm(scores) == pytest.approx(np.mean([2.0, 3.0, 10.0, 11.0]))


def test_optimality_gap_clips_scores_above_one():
    assert compare.optimality_gap(np.array([[2.0, 0.5]])) == pytest.approx(0.25)  # (0 + 0.5) / 2


def test_normalise_maps_random_to_zero_and_best_to_one():
    raw = np.array([[21.0, -0.5], [500.0, 1.0], [260.5, 0.25]])
    out = compare.normalise(raw, [21.0, -0.5], [500.0, 1.0])
    np.testing.assert_allclose(out, [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="best score must exceed"):
        compare.normalise(raw, [1.0, 0.0], [1.0, 1.0])


def test_final_score_reads_the_last_evaluation_of_a_finished_run(tmp_path):
    run_dir = make_run(tmp_path, "e", "dqn", "CartPole-v1", 0, [10.0, 30.0])
    assert compare.final_score(run_dir) == 30.0
    assert compare.final_score(run_dir, steps=100) == 30.0
    with pytest.raises(ValueError, match="unfinished"):
        compare.final_score(run_dir, steps=200)  # stopped at 100 of 200
    stopped = make_run(tmp_path, "e", "dqn", "CartPole-v1", 1, [10.0, 30.0], interrupted=True)
    with pytest.raises(ValueError, match="unfinished"):
        compare.final_score(stopped, steps=100)
    empty = make_run(tmp_path, "e", "dqn", "CartPole-v1", 2, [])
    with pytest.raises(FileNotFoundError):
        compare.final_score(empty)


def test_find_run_and_score_matrix(tmp_path):
    make_run(tmp_path, "a", "dqn", "CartPole-v1", 0, [1.0, 2.0])
    make_run(tmp_path, "b", "dqn", "CartPole-v1", 1, [3.0, 4.0])
    make_run(tmp_path, "b", "dqn", "CartPole-v1", 2, [5.0], every=50)  # only 50 of 100 steps: not counted
    assert compare.find_run(tmp_path, ["a", "b"], "dqn", TASK, 0).parent.parent.parent.name == "a"
    assert compare.find_run(tmp_path, ["a", "b"], "dqn", TASK, 2) is None
    matrix = compare.score_matrix(tmp_path, ["a", "b"], "dqn", [TASK], [0, 1, 2, 3])
    np.testing.assert_array_equal(matrix[:2, 0], [2.0, 4.0])
    assert np.isnan(matrix[2:, 0]).all()
    make_run(tmp_path, "b", "dqn", "CartPole-v1", 0, [1.0, 2.0])
    with pytest.raises(ValueError, match="stored twice"):
        compare.find_run(tmp_path, ["a", "b"], "dqn", TASK, 0)


def test_random_score_is_seeded_and_plausible():
    task = Task("hidden", "CartPole-v1", "CartPole-v1-hide1_3", 100, 500.0, "", hide=(1, 3))
    first, second = compare.random_score(task, episodes=30), compare.random_score(task, episodes=30)
    assert first == second
    assert 12.0 < first < 35.0  # a random CartPole policy lasts about 22 steps
    assert compare.random_score(task, episodes=30, seed=1) != first


def test_interval_estimates_points_and_intervals():
    rng = np.random.default_rng(0)
    scores = {"a": rng.random((3, 4)), "b": rng.random((3, 4)) + 0.5}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    out = compare.interval_estimates(scores, reps=300, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # numpy's global generator left as it was
    assert out == compare.interval_estimates(scores, reps=300, seed=1)  # seeded (rliable draws from numpy's global)
    assert out != compare.interval_estimates(scores, reps=300, seed=2)
    for name, matrix in scores.items():
        point, low, high = out[name]["IQM"]
        assert point == pytest.approx(metrics.aggregate_iqm(matrix))
        assert low <= point <= high
        assert out[name]["mean"][0] == pytest.approx(matrix.mean())
        assert out[name]["median"][0] == pytest.approx(np.median(matrix.mean(0)))  # of the per-task means
        assert out[name]["optimality gap"][0] == pytest.approx(metrics.aggregate_optimality_gap(matrix))
    scores["a"][0, 0] = np.nan
    with pytest.raises(ValueError, match="missing runs"):
        compare.interval_estimates(scores, reps=10)


def test_interval_bootstrap_is_stratified_by_task():
    # Task 0 always scores 0 and task 1 always 1: resampling runs within tasks cannot change the mean (0.5);
    # resampling the pooled values would.
    scores = {"a": np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])}
    _, low, high = compare.interval_estimates(scores, reps=200)["a"]["mean"]
    assert low == high == pytest.approx(0.5)


def test_improvement_probabilities():
    x = np.array([[2.0, 2.0], [3.0, 3.0]])
    y = np.array([[0.0, 0.0], [1.0, 1.0], [1.5, 1.5]])
    out = compare.improvement_probabilities({"x>y": (x, y), "y>x": (y, x), "x=x": (x, x)}, reps=200)
    assert out["x>y"] == (1.0, 1.0, 1.0)
    assert out["y>x"][0] == 0.0
    assert out["x=x"][0] == pytest.approx(0.5)  # ties count one half
    assert compare.verdict(out["x>y"]) == "helps" and compare.verdict(out["y>x"]) == "hurts"
    assert compare.verdict((0.7, 0.45, 0.9)) == "unclear"


def test_performance_profiles_count_runs_above_tau():
    scores = {"a": np.array([[0.1, 0.6], [0.4, 0.9]])}
    profile, band = compare.performance_profiles(scores, np.array([0.0, 0.5, 1.0]), reps=100)["a"]
    np.testing.assert_allclose(profile, [1.0, 0.5, 0.0])
    assert band.shape == (2, 3)


def test_contender_benchmark_matches_variant_keys_only():
    rows = [{"algo": "dqn", "env_id": "MinAtar/Breakout-v1", "overrides": {"frame_stack": 4, "batch_size": 32},
             "ms_per_update": 2.0},
            {"algo": "dqn", "env_id": "CartPole-v1", "overrides": {}, "ms_per_update": 1.0}]
    stacked = Contender("DQN-stack4", "dqn-stack4", "Q-learning", "", algo="dqn", overrides=(("frame_stack", 4),))
    plain = Contender("DQN", "dqn", "Q-learning", "")
    assert stacked.benchmark(rows, ["CartPole-v1", "MinAtar/Breakout-v1"])["ms_per_update"] == 2.0
    assert plain.benchmark(rows, ["MinAtar/Breakout-v1", "CartPole-v1"])["ms_per_update"] == 1.0
    assert plain.benchmark(rows, ["MinAtar/Breakout-v1"]) is None


def test_best_scores_take_the_best_mean_where_no_maximum_is_known():
    tasks = (Task("t0", "x", "x", 1, 10.0, ""), Task("t1", "y", "y", 1, float("nan"), ""))
    suite = Suite("s", tasks, (), ("e",), (0, 1), ())
    raw = {"a": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([[0.0, np.nan], [0.0, np.nan]])}
    np.testing.assert_allclose(suite.best_scores(raw), [10.0, 3.0])


@pytest.mark.parametrize("suite", [POMDP_SUITE, MINATAR_SUITE], ids=["pomdp", "minatar"])
def test_suites_are_consistent(suite):
    labels = [c.label for c in suite.contenders]
    assert len(set(labels)) == len(labels) and len({c.variant for c in suite.contenders}) == len(labels)
    for x, y, what in suite.pairs:
        assert x in labels and y in labels and what
    for contender in suite.contenders:
        assert contender.baseline is None or contender.baseline in labels
    assert len({t.folder for t in suite.tasks}) == len(suite.tasks)


@pytest.mark.parametrize("suite", [POMDP_SUITE, MINATAR_SUITE], ids=["pomdp", "minatar"])
def test_every_cell_is_stored_or_made_by_the_chapter_8_grid(suite):
    grid_outs = {Path(cell.out) for name in CH8_GRIDS for cell in load_grid(ROOT / "experiments" / name).cells}
    missing = []
    for contender in suite.contenders:
        for task in suite.tasks:
            for seed in suite.seeds:
                if compare.find_run(RESULTS, suite.experiments, contender.variant, task, seed) is not None:
                    continue
                wanted = {Path("results") / e / contender.variant / task.folder / f"seed{seed}"
                          for e in suite.experiments}
                if not wanted & grid_outs:
                    missing.append(f"{contender.label} on {task.name}, seed {seed}")
    assert not missing, "cells neither stored nor in chapter 8's grids: " + "; ".join(missing)


def test_the_chapter_8_grid_uses_the_suites_experiments():
    experiments = set(POMDP_SUITE.experiments) | set(MINATAR_SUITE.experiments)
    for name in CH8_GRIDS:
        for cell in load_grid(ROOT / "experiments" / name).cells:
            assert Path(cell.out).parts[1] in experiments, cell.out


def test_check_iqm_and_improvement_name_each_mistake(capsys):
    assert exercises.check_iqm(lambda s: torch.tensor(compare.iqm(s.numpy())))
    assert exercises.check_probability_of_improvement(
        lambda x, y: metrics.probability_of_improvement(x.numpy(), y.numpy()))
    x, y = exercises._scores_case()
    assert not exercises.check_iqm(lambda s: s.mean())
    assert "nothing trimmed" in capsys.readouterr().out
    assert not exercises.check_iqm(lambda s: s.sort(0).values[1:-1].mean(0).mean())
    assert "each task's median" in capsys.readouterr().out
    assert not exercises.check_probability_of_improvement(lambda a, b: (a.mean(0) > b.mean(0)).double().mean())
    assert "fraction of tasks" in capsys.readouterr().out
    assert not exercises.check_probability_of_improvement(
        lambda a, b: (a[:, None, :] > b[None, :, :]).double().mean())
    assert "ties count 0" in capsys.readouterr().out
    # The case separates every named mistake from the answer and from each other.
    ordered = x.flatten().sort().values
    k = len(ordered) // 4
    assert ordered[k:len(ordered) - k].mean() != x.mean()
    assert (x[:, None, :] == y[None, :, :]).any()  # there are ties to count


# Tests added by a mutation review of chapter 8's code: each pins a behaviour that a small change to
# companion/compare.py, companion/plots.py or companion/exercises.py left unnoticed.


def test_optimality_gap_measures_against_the_threshold():
    assert compare.optimality_gap(np.array([[0.2, 0.9]]), threshold=0.5) == pytest.approx(0.15)  # (0.3 + 0) / 2


def test_final_score_allows_one_percent_short_and_no_more(tmp_path):
    assert compare.final_score(make_run(tmp_path, "e", "ppo", "x", 0, [1.0, 7.0], every=495), steps=1000) == 7.0
    assert compare.final_score(make_run(tmp_path, "e", "ppo", "x", 1, [1.0, 7.0], every=500), steps=1000) == 7.0
    with pytest.raises(ValueError, match="unfinished"):
        compare.final_score(make_run(tmp_path, "e", "ppo", "x", 2, [1.0, 7.0], every=494), steps=1000)  # 988


def test_final_score_counts_a_run_without_an_interrupted_flag_as_unfinished(tmp_path):
    run_dir = make_run(tmp_path, "e", "dqn", "x", 0, [1.0, 2.0])
    (run_dir / "meta.json").write_text(json.dumps({"wall_seconds": 1.0}))
    assert compare.final_score(run_dir) == 2.0
    with pytest.raises(ValueError, match="unfinished"):
        compare.final_score(run_dir, steps=100)


def test_score_matrix_rows_are_seeds_and_columns_tasks(tmp_path):
    other = Task("other", "CartPole-v1", "other", 100, 500.0, "")
    for seed in (0, 1, 2):
        make_run(tmp_path, "e", "dqn", TASK.folder, seed, [0.0, 10.0 + seed])
        make_run(tmp_path, "e", "dqn", other.folder, seed, [0.0, 20.0 + seed])
    np.testing.assert_array_equal(compare.score_matrix(tmp_path, ["e"], "dqn", [TASK, other], [0, 1, 2]),
                                  [[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]])


class _EpisodesEnv:
    """A stand-in env: episode k (from 1) lasts k steps of reward 1, ending by truncation; or, endless, 1000."""

    def __init__(self, endless=False):
        self.endless, self.episode, self.t = endless, 0, 0
        self.action_space = self

    def seed(self, seed):
        self.action_seed = seed

    def sample(self):
        return 0

    def reset(self, seed=None):
        if seed is not None:
            self.reset_seed = seed
            return None, {}
        self.episode, self.t = self.episode + 1, 0
        return None, {}

    def step(self, action):
        self.t += 1
        return None, 1.0, False, self.t >= (1000 if self.endless else self.episode), {}

    def close(self):
        pass


def test_random_score_averages_the_episodes_with_the_tasks_observation_changes(monkeypatch):
    import companion.envs

    made = []

    def fake_make_env(env_id, **kwargs):
        made.append((env_id, kwargs))
        made.append(_EpisodesEnv(endless=env_id == "endless"))
        return made[-1]

    monkeypatch.setattr(companion.envs, "make_env", fake_make_env)
    task = Task("t", "toy", "toy", 1, 1.0, "", hide=(1, 3), flicker=0.25)
    assert compare.random_score(task, episodes=4, seed=5) == pytest.approx(2.5)  # returns 1, 2, 3, 4
    (env_id, kwargs), env = made[:2]
    assert env_id == "toy" and tuple(kwargs["hide"]) == (1, 3) and kwargs["flicker"] == 0.25
    assert env.action_seed == 5 and env.reset_seed == 5
    endless = Task("e", "endless", "endless", 1, 1.0, "")
    assert compare.random_score(endless, episodes=2, max_steps=7) == 7.0  # capped


def test_interval_estimates_are_rliables_with_the_given_seed_and_reps():
    from rliable import library

    rng = np.random.default_rng(3)
    scores = {"a": rng.random((4, 3)), "b": rng.random((5, 3))}

    def aggregates(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x)])

    out = compare.interval_estimates(scores, reps=150, seed=7)
    state = np.random.get_state()
    np.random.seed(7)
    point, interval = library.get_interval_estimates(dict(scores), aggregates, reps=150)
    np.random.set_state(state)
    for agent in scores:
        for k, name in enumerate(("IQM", "mean", "median", "optimality gap")):
            assert out[agent][name] == pytest.approx((point[agent][k], interval[agent][0, k],
                                                      interval[agent][1, k]), abs=1e-12)


def test_performance_profiles_are_seeded_and_bands_enclose_the_profile():
    rng = np.random.default_rng(4)
    scores = {"a": rng.random((5, 3)), "b": rng.random((5, 3)) * 1.5}
    taus = np.linspace(0.0, 1.5, 31)
    out = compare.performance_profiles(scores, taus, reps=200, seed=1)
    for agent, matrix in scores.items():
        profile, band = out[agent]
        np.testing.assert_allclose(profile, [(matrix > tau).mean() for tau in taus])
        assert band.shape == (2, len(taus))
        assert (band[0] <= profile + 1e-12).all() and (profile <= band[1] + 1e-12).all()
        assert (band[0] < band[1]).any()
    again = compare.performance_profiles(scores, taus, reps=200, seed=1)
    other = compare.performance_profiles(scores, taus, reps=200, seed=2)
    np.testing.assert_array_equal(again["b"][1], out["b"][1])
    assert not np.array_equal(other["b"][1], out["b"][1])


def test_improvement_probabilities_are_seeded_and_intervals_ordered():
    rng = np.random.default_rng(5)
    pairs = {"x>y": (rng.random((4, 3)) + 0.2, rng.random((4, 3)))}
    out = compare.improvement_probabilities(pairs, reps=200, seed=1)["x>y"]
    point, low, high = out
    assert low <= point <= high and low < high
    assert out == compare.improvement_probabilities(pairs, reps=200, seed=1)["x>y"]
    assert out != compare.improvement_probabilities(pairs, reps=200, seed=2)["x>y"]


def test_verdict_needs_the_interval_strictly_off_one_half():
    assert compare.verdict((0.6, 0.5, 0.7)) == "unclear"
    assert compare.verdict((0.4, 0.3, 0.5)) == "unclear"
    assert compare.verdict((0.6, 0.51, 0.7)) == "helps"
    assert compare.verdict((0.4, 0.3, 0.49)) == "hurts"


def test_wall_times_median_min_max_and_count(tmp_path):
    run_dirs = [make_run(tmp_path, "e", "dqn", "x", seed, [1.0]) for seed in (0, 1, 5)]  # 10, 11, 15 s
    assert compare.wall_times(run_dirs) == {"median": 11.0, "min": 10.0, "max": 15.0, "runs": 3}
    empty = compare.wall_times([])
    assert empty["runs"] == 0 and all(np.isnan(empty[key]) for key in ("median", "min", "max"))


def test_best_scores_take_the_highest_mean_of_several_contenders():
    tasks = (Task("t0", "x", "x", 1, float("nan"), ""),)
    suite = Suite("s", tasks, (), ("e",), (0, 1), ())
    raw = {"a": np.array([[1.0], [3.0]]), "b": np.array([[5.0], [0.0]]), "c": np.array([[np.nan], [np.nan]])}
    np.testing.assert_allclose(suite.best_scores(raw), [2.5])  # b's mean; not a's 2, a mean of means, or b's 5


def test_contender_benchmark_prefers_the_first_env_and_ignores_its_own_other_overrides():
    rows = [{"algo": "dqn", "env_id": "CartPole-v1", "overrides": {"frame_stack": 4}, "ms_per_update": 1.0},
            {"algo": "dqn", "env_id": "MinAtar/Breakout-v1", "overrides": {"frame_stack": 4}, "ms_per_update": 2.0}]
    stacked = Contender("DQN-stack4", "dqn-stack4", "Q-learning", "", algo="dqn",
                        overrides=(("frame_stack", 4), ("batch_size", 64)))
    assert stacked.benchmark(rows, ["MinAtar/Breakout-v1", "CartPole-v1"])["ms_per_update"] == 2.0
    assert stacked.benchmark(rows, ["CartPole-v1", "MinAtar/Breakout-v1"])["ms_per_update"] == 1.0
    critic = POMDP_SUITE.contender("PPO-attn-critic")
    rows = [{"algo": "ppo-attn", "env_id": "CartPole-v1", "overrides": {}, "ms_per_update": 1.0},
            {"algo": "ppo-attn", "env_id": "CartPole-v1", "overrides": {"attend": "critic"}, "ms_per_update": 2.0}]
    assert critic.benchmark(rows, ["CartPole-v1"])["ms_per_update"] == 2.0
    assert POMDP_SUITE.contender("PPO-attn").benchmark(rows, ["CartPole-v1"])["ms_per_update"] == 1.0


@pytest.mark.parametrize("suite", [POMDP_SUITE, MINATAR_SUITE], ids=["pomdp", "minatar"])
def test_suite_contenders_of_one_algorithm_differ_in_their_variant_keys(suite):
    seen = {}
    for contender in suite.contenders:
        key = (contender.algo or contender.variant,
               tuple(sorted((k, str(v)) for k, v in contender.overrides if k in compare.VARIANT_KEYS)))
        assert key not in seen, f"{contender.label} and {seen.get(key)} would share benchmark rows"
        seen[key] = contender.label


@pytest.mark.parametrize("suite", [POMDP_SUITE, MINATAR_SUITE], ids=["pomdp", "minatar"])
def test_suite_task_folders_name_their_hide_and_flicker(suite):
    for task in suite.tasks:
        suffix = (f"-hide{'_'.join(map(str, task.hide))}" if task.hide else "") + (
            f"-flicker{task.flicker}" if task.flicker else "")
        assert ("-hide" in task.folder) == bool(task.hide), task.name
        assert ("-flicker" in task.folder) == bool(task.flicker), task.name
        assert task.folder.endswith(suffix), task.name


def test_suite_reads_its_runs(tmp_path):
    other = Task("other", "CartPole-v1", "other", 100, 500.0, "")
    suite = Suite("s", (TASK, other), (Contender("A", "a", "Q-learning", ""), Contender("B", "b", "Q-learning", "")),
                  ("e1", "e2"), (0, 1), ())
    make_run(tmp_path, "e1", "a", TASK.folder, 0, [0.0, 1.0])
    make_run(tmp_path, "e2", "a", TASK.folder, 1, [0.0, 2.0])
    make_run(tmp_path, "e1", "a", other.folder, 0, [0.0, 3.0])
    make_run(tmp_path, "e1", "a", other.folder, 1, [4.0], every=50)  # unfinished
    make_run(tmp_path, "e2", "b", other.folder, 1, [0.0, 5.0])
    assert suite.contender("B").variant == "b"
    with pytest.raises(KeyError):
        suite.contender("C")
    raw = suite.raw_scores(tmp_path)
    np.testing.assert_array_equal(raw["A"], [[1.0, 3.0], [2.0, np.nan]])
    np.testing.assert_array_equal(raw["B"], [[np.nan, np.nan], [np.nan, 5.0]])
    assert suite.sources(tmp_path) == {"A": ["e1+e2 2/2", "e1 1/2"], "B": ["-", "e2 1/2"]}
    assert [p.parents[2].name + "/" + p.parent.name + "/" + p.name for p in suite.run_dirs(tmp_path, "A")] == [
        "e1/CartPole-v1/seed0", "e2/CartPole-v1/seed1", "e1/other/seed0"]
    assert len(suite.run_dirs(tmp_path, "A", "other")) == 1
    with pytest.raises(KeyError, match="no task"):
        suite.run_dirs(tmp_path, "A", "missing")
    times = suite.wall_times(tmp_path, "toy")
    assert times["A"] == {"median": 10.5, "min": 10.0, "max": 11.0, "runs": 2} and times["B"]["runs"] == 0
    assert suite.wall_times(tmp_path)["A"]["runs"] == 3


def test_plot_interval_estimates_draws_each_ci_and_point():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from companion import plots

    estimates = {"a": {"IQM": (0.5, 0.3, 0.8), "optimality gap": (0.4, 0.35, 0.6)},
                 "b": {"IQM": (0.2, 0.1, 0.25), "optimality gap": (0.7, 0.5, 0.9)}}
    axes = plots.plot_interval_estimates(estimates)
    for ax, metric in zip(axes, ("IQM", "optimality gap"), strict=True):
        bars = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
        ticks = [line.get_xdata()[0] for line in ax.lines]
        np.testing.assert_allclose(bars, [estimates[a][metric][1:] for a in estimates])
        np.testing.assert_allclose(ticks, [estimates[a][metric][0] for a in estimates])
    plt.close("all")


def test_plot_performance_profiles_draws_profiles_and_bands():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from companion import plots

    taus = np.array([0.0, 0.5, 1.0])
    profiles = {"a": (np.array([1.0, 0.6, 0.1]), np.array([[0.9, 0.4, 0.0], [1.0, 0.8, 0.3]]))}
    ax = plots.plot_performance_profiles(profiles, taus)
    (line,) = ax.lines
    np.testing.assert_allclose(line.get_xdata(), taus)
    np.testing.assert_allclose(line.get_ydata(), profiles["a"][0])
    vertices = ax.collections[0].get_paths()[0].vertices
    assert vertices[:, 1].min() == pytest.approx(0.0) and vertices[:, 1].max() == pytest.approx(1.0)
    assert sorted(set(np.round(vertices[:, 1], 6))) == sorted({0.9, 0.4, 0.0, 1.0, 0.8, 0.3})
    plt.close("all")


def test_plot_improvement_draws_each_ci_point_and_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from companion import plots

    probabilities = {"z vs y": (0.7, 0.55, 0.85), "a vs b": (0.3, 0.2, 0.45)}
    ax = plots.plot_improvement(probabilities)
    np.testing.assert_allclose([(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches],
                               [(0.55, 0.85), (0.2, 0.45)])
    assert [line.get_xdata()[0] for line in ax.lines[:2]] == pytest.approx([0.7, 0.3])
    assert ax.lines[2].get_xdata()[0] == 0.5  # the "neither is better" line
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z vs y", "a vs b"]
    plt.close("all")


@pytest.mark.parametrize("answer, hint", [
    (lambda s: s.flatten().median(), "the median"),
    (lambda s: (lambda o: o[4:len(o) - 4].mean())(s.flatten().sort().values), "rounded up"),
    (lambda s: s.mean(0).sort().values[1:4].mean(), "IQM of the per-task means"),
    (lambda s: s.flatten().max(), "differ from the reference"),
])
def test_check_iqm_names_the_other_mistakes(answer, hint, capsys):
    assert not exercises.check_iqm(answer)
    assert hint in capsys.readouterr().out


def _pairs(a, b):
    return a[:, None, :], b[None, :, :]


@pytest.mark.parametrize("answer, hint", [
    (lambda x, y: ((_pairs(x, y)[0] >= _pairs(x, y)[1]).double()).mean(), "ties count 1"),
    (lambda x, y: ((x.flatten()[:, None] > y.flatten()[None, :]).double()
                   + 0.5 * (x.flatten()[:, None] == y.flatten()[None, :]).double()).mean(), "across tasks"),
    (lambda x, y: ((_pairs(y, x)[0] > _pairs(y, x)[1]).double()
                   + 0.5 * (_pairs(y, x)[0] == _pairs(y, x)[1]).double()).mean(), "P(Y > X)"),
    (lambda x, y: x.max(), "differ from the reference"),
])
def test_check_probability_of_improvement_names_the_other_mistakes(answer, hint, capsys):
    assert not exercises.check_probability_of_improvement(answer)
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize("rows", ["", "100,5,0,10\n"], ids=["header only", "no meta.json"])
def test_find_run_skips_a_run_in_progress(tmp_path, rows):
    run_dir = tmp_path / "e" / "dqn" / TASK.folder / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "eval.csv").write_text("step,mean_return,std_return,episodes\n" + rows)
    assert compare.find_run(tmp_path, ["e"], "dqn", TASK, 0) is None


def test_suite_costs_read_benchmarks_and_flag_this_chapters_runs(tmp_path):
    make_run(tmp_path, "ch2-pomdp", "dqn", "CartPole-v1", 0, [1.0, 2.0])  # wall 10 s
    make_run(tmp_path, "ch8-pomdp", "dqn", "CartPole-v1", 1, [1.0, 2.0])  # wall 11 s, made by chapter 8
    make_run(tmp_path, "ch2-pomdp", "drqn", "CartPole-v1", 0, [1.0, 2.0])
    suite = Suite("s", (TASK,), (Contender("DQN", "dqn", "Q", ""), Contender("DRQN", "drqn", "Q", "")),
                  ("ch2-pomdp", "ch8-pomdp"), (0, 1), ())
    rows = [{"algo": "dqn", "env_id": "CartPole-v1", "overrides": {}, "parameters": 5, "ms": 2.0, "bound_ms": 0.5,
             "ratio": 3.9},
            {"algo": "drqn", "env_id": "CartPole-v1", "overrides": {}, "parameters": 7, "ms_per_update": 3.0}]
    dqn, drqn = suite.costs(tmp_path, rows, ["CartPole-v1"], "toy")
    assert dqn == {"label": "DQN", "parameters": 5, "ms": 2.0, "bound_ms": 0.5, "ratio": 3.9, "wall": 10.5,
                   "runs": 2, "shared": True}
    assert drqn == {"label": "DRQN", "parameters": 7, "ms": 3.0, "bound_ms": None, "ratio": None, "wall": 10.0,
                    "runs": 1, "shared": False}
    assert suite.costs(tmp_path, [], ["CartPole-v1"], "toy")[0]["ms"] is None
