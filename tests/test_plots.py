import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from companion.plots import Curve, aggregate, group_runs, load_curve, plot_curves, t_interval  # noqa: E402
from companion.records import RunDir, results_dir  # noqa: E402


def test_t_interval_matches_the_formula():
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 30.0]])
    mean, low, high = t_interval(values)
    np.testing.assert_allclose(mean, [7 / 3, 20.0])
    half = 4.303 * values.std(axis=0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(high - mean, half)
    np.testing.assert_allclose(mean - low, half)
    one = t_interval(np.array([[5.0]]))
    assert one[0] == one[1] == one[2] == 5.0


def test_aggregate_on_common_steps_and_on_a_grid():
    a, b = Curve([1, 2, 3], [1.0, 2.0, 3.0]), Curve([2, 3, 4], [5.0, 6.0, 7.0])
    steps, mean, low, high, n = aggregate([a, b])
    np.testing.assert_array_equal(steps, [2, 3])
    np.testing.assert_allclose(mean, [3.5, 4.5])
    assert n == 2 and (low <= mean).all() and (mean <= high).all()
    steps, mean, *_ = aggregate([a, b], grid=np.array([2.5]))
    np.testing.assert_allclose(mean, [(2.5 + 5.5) / 2])
    with pytest.raises(ValueError):
        aggregate([])


def _fake_run(path, algo, seed, evals, hide=(), stack=1):
    run = RunDir.create(path, {"run": {"algo": algo, "env_id": "CartPole-v1", "seed": seed, "hide": list(hide),
                                       "flicker": 0.0}, "agent": {"frame_stack": stack}})
    for step, value in evals:
        run.append("eval", (step, value, 0.0, 10))
    for episode, (step, value) in enumerate(evals):
        run.append("metrics", (episode, step, value, 10))
    return run.path


def test_group_runs_and_plot(tmp_path):
    dirs = [_fake_run(tmp_path / f"a{s}", "dqn", s, [(10, s), (20, 2 * s)]) for s in range(3)]
    dirs += [_fake_run(tmp_path / f"b{s}", "dqn", s, [(10, 1), (20, 1)], stack=4) for s in range(2)]
    dirs += [_fake_run(tmp_path / "c0", "drqn", 0, [(10, 1), (20, 3)], hide=(1, 3))]
    groups = group_runs(dirs)
    assert {k: len(v) for k, v in groups.items()} == {"dqn CartPole-v1": 3, "dqn stack4 CartPole-v1": 2,
                                                      "drqn CartPole-v1 hide=1,3": 1}
    for kind in ("eval", "train"):
        ax = plot_curves(groups, kind=kind, title="t")
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "dqn CartPole-v1 (3 seeds)" in labels and "drqn CartPole-v1 hide=1,3 (1 seed)" in labels
        assert "20" in ax.get_xlabel()


def test_darqn_groups_by_attention_and_update_curves(tmp_path):
    dirs = []
    for attention in ("soft", "hard"):
        for seed in range(2):
            path = tmp_path / f"{attention}{seed}"
            run = RunDir.create(path, {"run": {"algo": "darqn", "env_id": "MinAtar/Breakout-v1", "seed": seed},
                                       "agent": {"frame_stack": 1, "attention": attention}})
            for step in (1000, 2000):
                run.append_updates(step, {"loss": 1.0, "attention_entropy": step / 1000 + seed})
            dirs.append(path)
    groups = group_runs(dirs)
    assert sorted(groups) == ["darqn-hard MinAtar/Breakout-v1", "darqn-soft MinAtar/Breakout-v1"]
    assert list(load_curve(dirs[1], "update:attention_entropy").values) == [2.0, 3.0]
    ax = plot_curves(groups, kind="update:attention_entropy")
    assert ax.get_ylabel() == "attention entropy"
    with pytest.raises(ValueError, match="logged no 'reinforce'; it has: attention_entropy, loss, step"):
        load_curve(dirs[0], "update:reinforce")


def test_results_dir_is_found_upwards_or_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("COMPANION_RESULTS", raising=False)
    assert results_dir(tmp_path / "notebooks") == tmp_path / "results"
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path / "nowhere"))
    assert results_dir(tmp_path) is None


def test_summaries_of_finished_runs(tmp_path):
    from companion.plots import finished_runs, summarize, summary_table

    dirs = [_fake_run(tmp_path / "runs" / f"seed{s}", "dqn", s, [(10, s), (20, 2 * s + 1)]) for s in range(3)]
    for d in dirs[:2]:
        run = RunDir(d)
        run.write_meta({**run.meta(), "finished": "2026-11-23T00:00:00+0000"})
    assert finished_runs(tmp_path, "runs/seed*") == dirs[:2]  # the unfinished seed 2 is left out
    assert finished_runs(None, "runs/seed*") == []
    (row,) = summarize({"dqn": dirs, "none": []})
    assert row["label"] == "dqn" and row["n"] == 3 and row["best"] == 5.0
    np.testing.assert_allclose(row["final"], t_interval(np.array([1.0, 3.0, 5.0])))
    np.testing.assert_allclose(row["mean"][0], np.mean([0.5, 2.0, 3.5]))
    table = summary_table({"dqn": dirs})
    assert table.splitlines()[1].split()[:3] == ["dqn", "3", "3.00"]


def test_random_policy_is_the_floor():
    from companion.envs import make_env
    from companion.train import RandomPolicy, evaluate

    env = make_env("CartPole-v1")
    returns = evaluate(RandomPolicy(env.action_space.n), env, 20, 1.0, seed=0)
    assert len(returns) == 20 and 10 < np.mean(returns) < 40  # CartPole's random policy lasts ~22 steps


def test_stored_record_reads_the_json_or_says_none(tmp_path):
    import json

    from companion.plots import stored_record

    (tmp_path / "ch3-probe").mkdir()
    (tmp_path / "ch3-probe" / "critic_probe.json").write_text(json.dumps({"rows": [1, 2]}))
    assert stored_record(tmp_path, "critic_probe", folder="ch3-probe") == {"rows": [1, 2]}
    assert stored_record(tmp_path, "critic_probe") is None  # not under benchmarks/
    assert stored_record(None, "critic_probe", folder="ch3-probe") is None
