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
    assert "each task's IQM" in capsys.readouterr().out
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
