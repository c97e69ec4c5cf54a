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


# Results tables and the delay sweep (chapters 4 to 7) ---------------------------------------------------


def test_summary_tables_put_the_random_floor_above_each_table(tmp_path):
    from companion.plots import summary_table, summary_tables
    from companion.train import random_return

    dirs = [_fake_run(tmp_path / f"seed{s}", "dqn", s, [(10, s), (20, 2 * s)]) for s in range(2)]
    tasks = {"CartPole": ({"DQN": dirs, "nobody": []}, "CartPole-v1", {}),
             "CartPole, velocities hidden": ({"DQN": dirs[:1]}, "CartPole-v1", {"hide": (1, 3)})}
    text = summary_tables(tasks, episodes=5)
    first, second = text.split("\n\n")
    floor = random_return("CartPole-v1", episodes=5)
    assert first == f"CartPole: random policy {floor:.2f} (5 episodes)\n" + summary_table({"DQN": dirs})
    assert "nobody" not in first  # an agent without runs is left out
    hidden = random_return("CartPole-v1", episodes=5, hide=(1, 3))
    assert second.startswith(f"CartPole, velocities hidden: random policy {hidden:.2f} (5 episodes)\n")
    assert text.endswith("\n") and not text.endswith("\n\n")  # print() adds the last blank line


def test_first_solved_counts_episodes_to_the_first_success(tmp_path):
    from companion.plots import first_solved

    path = _fake_run(tmp_path / "run", "ppo-memory", 0, [(100, -1.0), (200, 0.92), (300, 1.0)])
    run = RunDir(path)
    run.write_meta({**run.meta(), "episodes": 30, "steps": 300})  # 10 steps an episode
    assert first_solved(path) == 20  # success (0.92 + 1) / 2 = 0.96 at step 200
    assert first_solved(path, level=0.99) == 30
    assert first_solved(path, level=1.01) is None


def _sweep_rates():
    return {"memory": {4: [1.0, 1.0, 0.9], 16: [1.0, 0.6, 0.5]},
            "window": {4: [1.0, 1.0, 1.0], 16: []},
            "none": {4: [], 16: []}}


def test_plot_delay_sweep_draws_each_agent_and_chance():
    from companion.plots import plot_delay_sweep

    ax = plot_delay_sweep(_sweep_rates(), spread=0.1, dashed=["window"], chance_label="chance (no memory)")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["chance (no memory)", "memory (3 seeds)", "window (3 seeds)"]  # "none" has no runs
    memory, window = ax.containers  # one errorbar each
    assert memory.lines[0].get_linestyle() == "-" and window.lines[0].get_linestyle() == "--"
    np.testing.assert_allclose(memory.lines[0].get_xdata(), [4 * 0.9, 16 * 0.9])  # agent 0 of 3: 1 - 0.1
    np.testing.assert_allclose(window.lines[0].get_xdata(), [4.0])  # the middle agent; no run at 16
    np.testing.assert_allclose(memory.lines[0].get_ydata(), [2.9 / 3, 2.1 / 3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "16"]
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 1.05)


def test_delay_sweep_table_formats_each_cell():
    from companion.plots import delay_sweep_table

    lines = delay_sweep_table(_sweep_rates()).splitlines()
    assert lines[0] == "agent  " + f"{'D = 4':>24s}{'D = 16':>24s}"  # label column: "memory" + 1
    cells = []
    for values, solved in (([1.0, 1.0, 0.9], 2), ([1.0, 0.6, 0.5], 1)):  # seeds at 0.95 or more
        mean, low, high = t_interval(np.array(values))
        cells.append(f"{mean:.2f} [{low:5.2f}, {high:.2f}] {solved}/3")
    assert lines[1] == "memory " + "".join(f"{cell:>24s}" for cell in cells)
    assert lines[2].endswith(f"{'-':>24s}") and lines[3].split() == ["none", "-", "-"]
    assert delay_sweep_table(_sweep_rates(), width=10).splitlines()[1].startswith("memory    " + " ")


def test_target_copy_ceiling_by_hand():
    from companion.agents.base import target_copy_ceiling

    steps = np.array([0, 1999, 2000, 2001, 2999, 3000, 3001, 4500, 12000])
    got = target_copy_ceiling(steps, learning_starts=2000, target_update=1000, gamma=0.9, max_reward=2.0)
    # Terms of the sum: 0 before any update; then 1 + the copies of a trained network made before step s
    # (the copy at a multiple of 1000 follows that step's updates).
    terms = np.array([0, 0, 0, 1, 1, 1, 2, 3, 10])
    np.testing.assert_allclose(got, [2.0 * sum(0.9**k for k in range(n)) for n in terms])
    # Copies counted by the loop's clock, not from learning_starts: DARQN's ALE preset learns from 25k and
    # copies every 10k, so one trained copy (at 30k) precedes step 30,001 and two precede 40,001.
    np.testing.assert_allclose(target_copy_ceiling([30_000, 30_001, 40_001], 25_000, 10_000, 0.5), [1, 1.5, 1.75])
    assert target_copy_ceiling(10**9, 0, 1, 0.99) == pytest.approx(100.0)  # the never-failing value
    # Chapter 2's numbers: DRQN's copy every 1000 steps leaves 62.7 of 100 at 100k steps, every 250 leaves 98.1.
    assert target_copy_ceiling(100_000, 2000, 1000, 0.99) == pytest.approx(62.65, abs=0.01)
    assert target_copy_ceiling(100_000, 2000, 250, 0.99) == pytest.approx(98.05, abs=0.01)
    for bad in ({"target_update": 0, "gamma": 0.99}, {"target_update": 10, "gamma": 1.0}):
        with pytest.raises(ValueError):
            target_copy_ceiling(100, 0, **bad)


def test_plot_value_ceiling(tmp_path):
    from companion.plots import plot_value_ceiling

    run = RunDir.create(tmp_path / "r", {"run": {"algo": "drqn"}, "agent": {"learning_starts": 100,
                                                                             "target_update": 50, "gamma": 0.5}})
    run.append_updates(200, {"loss": 0.1, "q": 1.2})
    run.append_updates(300, {"loss": 0.1, "q": 1.6})
    ax = plot_value_ceiling({"a run": run.path})
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["a run: mean Q"].get_ydata(), [1.2, 1.6])
    np.testing.assert_allclose(lines["ceiling, a copy every 50 steps"].get_ydata(), [0.0, 1.5, 1.875])
    assert lines["never failing: 1/(1-gamma) = 2"].get_ydata()[0] == pytest.approx(2.0)
    bare = RunDir.create(tmp_path / "b", {"run": {"algo": "drqn"}, "agent": {"learning_starts": 0,
                                                                              "target_update": 1, "gamma": 0.5}})
    bare.append_updates(10, {"loss": 0.1})
    with pytest.raises(ValueError, match="no Q-values"):
        plot_value_ceiling({"bare": bare.path})


def test_plot_value_ceiling_scales_both_bounds_by_max_reward(tmp_path):
    """max_reward (a step's largest reward) scales the dashed ceiling and the dotted never-failing line."""
    from companion.plots import plot_value_ceiling

    run = RunDir.create(tmp_path / "r", {"run": {"algo": "drqn"}, "agent": {"learning_starts": 100,
                                                                             "target_update": 50, "gamma": 0.5}})
    run.append_updates(200, {"loss": 0.1, "q": 1.2})
    run.append_updates(300, {"loss": 0.1, "q": 1.6})
    ax = plot_value_ceiling({"a run": run.path}, max_reward=2.0)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["ceiling, a copy every 50 steps"].get_ydata(), [0.0, 3.0, 3.75])
    assert lines["never failing: 2/(1-gamma) = 4"].get_ydata()[0] == pytest.approx(4.0)


def test_finished_runs_leaves_out_interrupted_ones(tmp_path):
    from companion.plots import finished_runs

    for name, meta in (("done", {"finished": "t", "interrupted": False}),
                       ("stopped", {"finished": "t", "interrupted": True}), ("running", {})):
        run = RunDir.create(tmp_path / name, {"run": {"algo": "dqn"}, "agent": {}})
        run.write_meta(meta)
    assert [p.name for p in finished_runs(tmp_path, "*")] == ["done"]
    assert finished_runs(None, "*") == []
