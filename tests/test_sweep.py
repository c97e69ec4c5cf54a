"""companion.sweep and ``python -m companion sweep`` (issue 17): a grid file expands into train commands (chapter
2's grid into exactly the commands of the former experiments/ch2.sh; agent tables, per-env steps, list-valued
excludes, a block's loop order and seed-by-seed blocks as the other former scripts need them; the book's grids
against the stored runs: tests/test_grids.py); bad grids are one-line errors; the local pool,
Ray and submitit run a tiny grid to the records of its commands run one by one; a second sweep skips finished
runs, resumes an interrupted one and reruns a failed one; a failing run does not stop the others; Ctrl-C or
SIGTERM of a sweep leaves runs that resume; --status reads it all without starting anything."""

from __future__ import annotations

import filecmp
import json
import os
import pickle
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from companion.__main__ import SWEEP_BACKENDS, _default_out, main
from companion.sweep import (
    BACKENDS,
    LOG_NAME,
    STATUS_NAME,
    GridError,
    RunState,
    env_dir_name,
    load_grid,
    run_state,
    run_sweep,
    status_report,
)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ("metrics.csv", "eval.csv", "updates.csv", "policy.pt")
# Two seeds of DQN on CartPole at the quick budget: about a second of training each (1,100 steps, so that
# updates.csv gets its row at step 1,000), and a few seconds to start Python and torch.
TINY = """root = "."
[[grid]]
experiment = "tiny"
algos = ["dqn"]
envs = ["CartPole-v1"]
seeds = {seeds}
budget = "quick"
steps = {steps}
{extra}
"""


def _grid(folder: Path, seeds: str = "[0, 1]", steps: int = 1100, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(TINY.format(seeds=seeds, steps=steps, extra=extra))
    return path


def _run_one_by_one(grid_path: Path, *extra: str) -> None:
    """The grid's dry-run commands, each run by hand in the grid's folder, one after the other."""
    grid = load_grid(grid_path)
    for line in grid.commands():
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "companion"]
        subprocess.run([sys.executable, *argv[1:], *extra], cwd=grid.root, check=True, capture_output=True,
                       timeout=300)


def _same_records(a: Path, b: Path) -> None:
    for name in RECORDS:
        assert (a / name).exists(), a / name
        assert filecmp.cmp(a / name, b / name, shallow=False), f"{name} differs: {a} and {b}"


def _sweep_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "companion", "sweep", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def by_hand(tmp_path_factory) -> Path:
    """The tiny grid's two commands, run one by one: the records every backend must reproduce."""
    folder = tmp_path_factory.mktemp("by_hand")
    _run_one_by_one(_grid(folder))
    return folder


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny grid run by ``python -m companion sweep GRID --jobs 2`` (the local pool)."""
    folder = tmp_path_factory.mktemp("swept")
    proc = _sweep_cli(_grid(folder), "--jobs", "2")
    return folder, proc


def _out(folder: Path, seed: int, variant: str = "dqn") -> Path:
    return folder / "results" / "tiny" / variant / "CartPole-v1" / f"seed{seed}"


# -- the grid --------------------------------------------------------------------------------------------------
def test_a_tiny_grid_expands_into_train_commands(tmp_path):
    grid = load_grid(_grid(tmp_path))
    assert grid.name == "tiny" and grid.root == tmp_path.resolve()
    assert grid.commands() == [
        f"python -m companion train --algo dqn --env CartPole-v1 --seed {seed} --budget quick --steps 1100 "
        f"--out results/tiny/dqn/CartPole-v1/seed{seed} --no-progress" for seed in (0, 1)]
    assert [cell.run_dir for cell in grid.cells] == [_out(tmp_path.resolve(), seed) for seed in (0, 1)]
    assert grid.cells[0].command(resume=True)[-1] == "--resume"
    assert SWEEP_BACKENDS == BACKENDS  # the CLI's choices, named without importing the sweep


def test_envs_sets_excludes_and_the_folder_pattern(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("""
        name = "g"
        out = "runs/{experiment}/{variant}/{env}/s{seed}"
        algos = ["dqn", "drqn"]
        envs = ["MinAtar/Breakout-v1", { id = "CartPole-v1", hide = "1,3", set = { prev_action = true } },
                { id = "CartPole-v1", flicker = 0.25, name = "flicky" }]
        seeds = 2
        set = { lr = 0.00025, double = false }
        sets = { "" = {}, K4 = { seq_len = 4 } }
        exclude = [{ algo = "dqn", set = "K4" }, { env = "MinAtar/Breakout-v1", seed = 1 }]
        flags = ["--flicker", "0.1"]
        """.replace("\n        ", "\n"))
    grid = load_grid(path)
    outs = [cell.out for cell in grid.cells]
    assert outs[:3] == ["runs/g/dqn/MinAtar-Breakout-v1/s0", "runs/g/drqn/MinAtar-Breakout-v1/s0",
                        "runs/g/drqn-K4/MinAtar-Breakout-v1/s0"]
    assert "runs/g/drqn-K4/CartPole-v1-hide1_3/s1" in outs and "runs/g/dqn/flicky/s1" in outs
    assert not any("Breakout" in out and out.endswith("s1") for out in outs) and len(outs) == 3 + 3 + 3 + 3 + 3
    hide = next(cell for cell in grid.cells if cell.out == "runs/g/drqn-K4/CartPole-v1-hide1_3/s1")
    assert hide.argv() == ["train", "--algo", "drqn", "--env", "CartPole-v1", "--hide", "1,3", "--seed", "1",
                           "--flicker", "0.1", "--set", "lr=0.00025", "--set", "double=false", "--set",
                           "prev_action=true", "--set", "seq_len=4", "--out", hide.out, "--no-progress"]
    assert env_dir_name("CartPole-v1", (1, 3), 0.5) == "CartPole-v1-hide1_3-flicker0.5"
    assert _default_out("dqn", "CartPole-v1", 0, (1, 3), 0.0) == Path("runs/dqn/CartPole-v1-hide1_3/seed0")


def _ch2_sh_commands() -> list[str]:
    """The former experiments/ch2.sh's commands, derived by reading the script (its loops, then xargs's
    --no-progress); the script's echoed lines equalled them until it was replaced by experiments/ch2.toml."""
    lines = [f"train --algo dqn --env CartPole-v1 --seed {seed} --budget book "
             f"--out results/ch2-cartpole/dqn/CartPole-v1/seed{seed}" for seed in range(5)]
    for seed in range(3):
        for env_args, name in (("--hide 1,3", "CartPole-v1-hide1_3"), ("--flicker 0.5", "CartPole-v1-flicker0.5")):
            common = f"--env CartPole-v1 {env_args} --seed {seed} --steps 100000"
            lines += [f"train --algo dqn {common} --out results/ch2-pomdp/dqn/{name}/seed{seed}",
                      f"train --algo dqn {common} --set frame_stack=4 --out results/ch2-pomdp/dqn-stack4/{name}/"
                      f"seed{seed}",
                      f"train --algo drqn {common} --out results/ch2-pomdp/drqn/{name}/seed{seed}"]
    return [f"python -m companion {line} --no-progress" for line in lines]


def test_the_ch2_grid_is_the_commands_of_the_former_ch2_sh():
    grid = load_grid(ROOT / "experiments" / "ch2.toml")
    assert grid.root == ROOT
    assert grid.commands() == _ch2_sh_commands()


def test_agent_tables_env_steps_list_excludes_order_and_interleave(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text("""
        interleave = "seed"
        seeds = [1, 0]
        [[grid]]
        experiment = "a"
        algos = [{ algo = "ppo", name = "ppo-stack4", set = { frame_stack = 4, prev_action = true } },
                 { algo = "drqn", sets = { all = { burn_in = 8 }, all-t250 = { burn_in = 8, target_update = 250 } } },
                 "ppo"]
        envs = [{ id = "CueRecall-D4-v0", steps = 12000, set = { n_steps = 6 } }, "CartPole-v1"]
        steps = 100
        set = { eval_episodes = 50 }
        sets = { "" = {}, K4 = { seq_len = 4 } }
        exclude = [{ variant = ["drqn-all-t250", "ppo-K4"], seed = [0, 5] }, { algo = "drqn", env = "CartPole-v1" }]
        order = ["algo", "set", "env", "seed"]
        [[grid]]
        experiment = "b"
        algos = ["dqn"]
        envs = ["CartPole-v1"]
        """.replace("\n        ", "\n"))
    grid = load_grid(path)
    block_a = [("ppo-stack4", "CueRecall-D4-v0"), ("ppo-stack4", "CartPole-v1"), ("ppo-stack4-K4", "CueRecall-D4-v0"),
               ("ppo-stack4-K4", "CartPole-v1"), ("drqn-all", "CueRecall-D4-v0"), ("drqn-all-t250", "CueRecall-D4-v0"),
               ("ppo", "CueRecall-D4-v0"), ("ppo", "CartPole-v1"), ("ppo-K4", "CueRecall-D4-v0"),
               ("ppo-K4", "CartPole-v1")]  # agent by agent, its sets (drqn: its own), envs; seeds innermost
    expected = []
    for seed in (0, 1):  # interleaved: the lowest seed first, block a's runs then block b's
        expected += [f"a/{variant}/{env}/seed{seed}" for variant, env in block_a
                     if not (seed == 0 and variant in ("drqn-all-t250", "ppo-K4"))]
        expected += [f"b/dqn/CartPole-v1/seed{seed}"]
    assert [cell.out.split("/", 1)[1] for cell in grid.cells] == expected
    cells = {cell.out.split("/", 1)[1]: cell for cell in grid.cells}
    stack = cells["a/ppo-stack4-K4/CueRecall-D4-v0/seed1"]
    assert (stack.variant, stack.algo, stack.set_name, stack.seed) == ("ppo-stack4-K4", "ppo", "K4", 1)
    assert stack.argv()[:-3] == ["train", "--algo", "ppo", "--set", "frame_stack=4", "--set", "prev_action=true",
                                 "--env", "CueRecall-D4-v0", "--seed", "1", "--steps", "12000", "--set",
                                 "eval_episodes=50", "--set", "n_steps=6", "--set", "seq_len=4"]
    assert cells["a/ppo/CartPole-v1/seed0"].args == ("--algo", "ppo", "--env", "CartPole-v1", "--seed", "0",
                                                     "--steps", "100", "--set", "eval_episodes=50")
    assert cells["a/drqn-all-t250/CueRecall-D4-v0/seed1"].args[2:] == (
        "--env", "CueRecall-D4-v0", "--seed", "1", "--steps", "12000", "--set", "eval_episodes=50", "--set",
        "n_steps=6", "--set", "burn_in=8", "--set", "target_update=250")
    path.write_text(path.read_text().replace('interleave = "seed"', ""))
    assert [cell.out.split("/", 1)[1] for cell in load_grid(path).cells] == [
        f"a/{variant}/{env}/seed{seed}" for variant, env in block_a for seed in (1, 0)
        if not (seed == 0 and variant in ("drqn-all-t250", "ppo-K4"))] + [f"b/dqn/CartPole-v1/seed{seed}"
                                                                          for seed in (1, 0)]


def test_dry_run_prints_the_commands(capsys):
    assert main(["sweep", str(ROOT / "experiments" / "ch2.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"# 23 runs of {ROOT / 'experiments' / 'ch2.toml'}, each run in {ROOT}"
    assert out[1:] == _ch2_sh_commands()


BASE = 'algos = ["dqn"]\nenvs = ["CartPole-v1"]\nseeds = [0]\n'


@pytest.mark.parametrize(("text", "expected"), [
    ("algos = [dqn", "is not valid TOML: "),
    (BASE + "algo = 'dqn'", "g.toml: unknown key 'algo'; valid: name, description, root, grid, experiment, algos"),
    ('envs = ["CartPole-v1"]\nseeds = [0]', "g.toml: algos is missing; expected a list of strings"),
    ('algos = []\nenvs = ["CartPole-v1"]\nseeds = [0]', "algos is []; expected a list of strings"),
    ('algos = ["dqn"]\nseeds = [0]', "envs is missing or empty"),
    ('algos = ["dqn"]\nenvs = ["CartPole-v1"]', "seeds is missing; expected a count (3) or a list"),
    (BASE.replace("[0]", "[0, 0]"), "a list of distinct seeds"),
    (BASE.replace("[0]", "[-1]"), "seeds is [-1]"),
    (BASE + "budget = 'huge'", "budget 'huge' is not one of quick, book, full"),
    (BASE + "steps = 0", "steps must be a positive integer, not 0"),
    (BASE.replace("dqn", "dqnn"), "unknown algorithm 'dqnn'; choose from"),
    (BASE + "[[grid]]\nexperiment = 'a'\nsteps = 5\nbudgets = 'quick'", "g.toml [[grid]] 1: unknown key 'budgets'"),
    (BASE + "[[grid]]\n[[grid]]", "two runs would share the directory results/g/dqn/CartPole-v1/seed0"),
    (BASE + "out = 'runs/{algorithm}'", "out 'runs/{algorithm}' is not a folder pattern with the fields"),
    (BASE.replace('"CartPole-v1"', '{ id = "CartPole-v1", hid = [1] }'), "envs[0]: unknown key 'hid'"),
    (BASE.replace('"CartPole-v1"', '{ id = "CartPole-v1", flicker = 2 }'), "flicker must be a probability"),
    (BASE + "set = { lr = { a = 1 } }", "set: lr must be a number, a string, a boolean or a list of numbers"),
    (BASE + "sets = []", "sets must be a table of named override tables"),
    (BASE + "exclude = [{ agent = 'dqn' }]", "exclude: unknown key 'agent'"),
    (BASE + "order = ['seed', 'env', 'algo']", "order must list seed, env, algo and set, each once"),
    (BASE + "interleave = 'env'", 'interleave must be "seed"'),
    ("[[grid]]\ninterleave = 'seed'\n" + BASE, "[[grid]] 1: unknown key 'interleave'"),
    (BASE.replace('["dqn"]', "[{ algo = 'dqn', agent = 'x' }]"), "algos[0]: unknown key 'agent'; valid: algo, name"),
    (BASE.replace('["dqn"]', "[{ name = 'x' }]"), "algos[0] has no algo"),
    (BASE.replace('["dqn"]', "[{ algo = 'dqn', sets = [] }]"), "sets must be a table of named override tables"),
    (BASE.replace('["dqn"]', "[{ algo = 'dqnn' }]"), "unknown algorithm 'dqnn'"),
    (BASE.replace('["dqn"]', "[{ algo = 'dqn' }, 'dqn']"), "two runs would share the directory"),
    (BASE.replace('"CartPole-v1"', '{ id = "CartPole-v1", steps = -5 }'), "envs[0]: steps must be a positive"),
    (BASE + "exclude = [{ algo = 'dqn' }]", "the grid has no runs"),
    (BASE + "flags = ['--out', 'x']", "flags may not hold --out"),
    (BASE + "flags = ['--bogus']", "the run results/g/dqn/CartPole-v1/seed0 is not a train command: python -m "
                                   "companion: error: unrecognized arguments: --bogus"),
    (BASE + "flags = ['--steps', 'ten']", "argument --steps: expected a positive integer, got 'ten'"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, text, expected):
    path = tmp_path / "g.toml"
    path.write_text(text)
    code = main(["sweep", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err, err
    if "is not a train command" not in err:
        with pytest.raises(GridError):
            load_grid(path)


def test_a_missing_grid_and_backend_options_of_another_backend_are_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err == f"error: no grid file {tmp_path / 'none.toml'}\n"
    assert main(["sweep", str(_grid(tmp_path)), "--ray-address", "auto"]) == 2
    assert capsys.readouterr().err == "error: --ray-address is an option of the ray backend, not local\n"


def test_a_missing_backend_package_is_named(tmp_path, capsys, monkeypatch):
    grid = _grid(tmp_path)
    for module in ("ray", "submitit"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
        with pytest.raises(ModuleNotFoundError, match=f"needs the {module} package: pip install {module}"):
            run_sweep(load_grid(grid), module)
        assert main(["sweep", str(grid), "--backend", module]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: the {module} backend needs the {module} package") and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


# -- the local pool --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_local_pool_makes_the_records_of_the_commands_run_one_by_one(swept, by_hand):
    folder, proc = swept
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(line.split(" ", 1)[1].split(",")[0] for line in lines[:2]) == ["done (started"] * 2, proc.stdout
    assert lines[-1].startswith("2 runs: 2 done, 0 running?, 0 interrupted, 0 failed, 0 not started; "), proc.stdout
    for seed in (0, 1):
        _same_records(_out(folder, seed), _out(by_hand, seed))
        status = json.loads((_out(folder, seed) / STATUS_NAME).read_text())
        assert status["state"] == "exited" and status["returncode"] == 0
        log = (_out(folder, seed) / LOG_NAME).read_text()
        assert log.startswith("==> ") and "done: 1100 steps" in log
        assert json.loads((_out(folder, seed) / "meta.json").read_text())["hardware"]["torch_threads"] == 1


@pytest.mark.slow
def test_a_second_sweep_skips_finished_runs(swept, capsys):
    folder, _ = swept
    before = {seed: (_out(folder, seed) / "metrics.csv").stat().st_mtime_ns for seed in (0, 1)}
    outcomes = run_sweep(load_grid(folder / "tiny.toml"))
    assert [(o.state, o.action, o.returncode) for o in outcomes] == [("done", "skipped", None)] * 2
    assert before == {seed: (_out(folder, seed) / "metrics.csv").stat().st_mtime_ns for seed in (0, 1)}
    assert main(["sweep", str(folder / "tiny.toml"), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "done         results/tiny/dqn/CartPole-v1/seed0", "done         results/tiny/dqn/CartPole-v1/seed1",
        "2 runs: 2 done, 0 running?, 0 interrupted, 0 failed, 0 not started"]
    seconds = [json.loads((_out(folder, seed) / "meta.json").read_text())["wall_seconds"] for seed in (0, 1)]
    assert lines[3:] == [f"wall time of the 2 done runs (meta.json): {sum(seconds) / 3600:.2f} h in all, "
                         f"median {sum(seconds) / 2:.0f} s, longest {max(seconds):.0f} s"]


@pytest.mark.slow
def test_an_interrupted_run_is_resumed_to_the_records_of_an_uninterrupted_one(tmp_path, by_hand):
    path = _grid(tmp_path, seeds="[0]")
    assert status_report(load_grid(path)).splitlines()[-1] == ("1 runs: 0 done, 0 running?, 0 interrupted, 0 failed, "
                                                               "1 not started")
    _run_one_by_one(path, "--stop-at", "500")  # the train CLI's own stop: a checkpoint, then exit
    state = run_state(_out(tmp_path, 0))
    assert (state.state, state.checkpoint) == ("interrupted", True) and state.detail.startswith("stopped at step 5")
    assert status_report(load_grid(path)).splitlines()[0].startswith(
        "interrupted  results/tiny/dqn/CartPole-v1/seed0: stopped at step 5")
    [outcome] = run_sweep(load_grid(path))
    assert (outcome.state, outcome.action, outcome.returncode) == ("done", "resumed", 0), outcome
    assert "--resume" in (_out(tmp_path, 0) / LOG_NAME).read_text()
    _same_records(_out(tmp_path, 0), _out(by_hand, 0))


@pytest.mark.slow
def test_a_failing_run_is_listed_with_its_error_and_does_not_stop_the_others(tmp_path, by_hand, capsys):
    # The failing run is first, and one run at a time: the good one still runs after it.
    path = _grid(tmp_path, seeds="[0]", extra='sets = { bad = { no_such_setting = 1 }, "" = {} }')
    outcomes = run_sweep(load_grid(path), jobs=1)
    assert [(o.cell.variant, o.state, o.returncode) for o in outcomes] == [("dqn-bad", "failed", 2),
                                                                         ("dqn", "done", 0)]
    assert outcomes[0].detail.startswith("exit status 2: error: unknown setting 'no_such_setting' for dqn; valid: ")
    _same_records(_out(tmp_path, 0), _out(by_hand, 0))
    assert main(["sweep", str(path), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("failed       results/tiny/dqn-bad/CartPole-v1/seed0: exit status 2: error: unknown "
                               "setting 'no_such_setting'")
    assert lines[1:3] == ["done         results/tiny/dqn/CartPole-v1/seed0",
                          "2 runs: 1 done, 0 running?, 0 interrupted, 1 failed, 0 not started"]
    assert len(lines) == 4 and lines[3].startswith("wall time of the 1 done runs (meta.json): ")  # the failed run: none
    # The CLI's exit status says that not every run is done; a failed run is tried again.
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[1/2] failed (started," in out or "[2/2] failed (started," in out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_local_sweep_stops_its_runs_with_a_checkpoint(tmp_path, signum):
    """Ctrl-C (or a scheduler's SIGTERM) to the sweep reaches each run once: it saves and stops, queued runs do not
    start, and each is left for the next sweep to resume."""
    path = _grid(tmp_path, steps=50_000)
    sweep = subprocess.Popen([sys.executable, "-m", "companion", "sweep", str(path), "--jobs", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = _out(tmp_path, 0) / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") > 3):  # training, its stop handler in place
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()
        time.sleep(0.2)
    sweep.send_signal(signum)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 1, out + err
    assert f"sweep: {signal.Signals(signum).name} passed on to the runs" in err
    first, second = run_state(_out(tmp_path, 0)), run_state(_out(tmp_path, 1))
    assert (first.state, first.checkpoint) == ("interrupted", True), first
    assert first.detail.startswith("stopped at step "), first
    assert second.state == "not started" and not _out(tmp_path, 1).exists()
    assert "stopped (resume with --resume)" in (_out(tmp_path, 0) / LOG_NAME).read_text()
    assert out.splitlines()[-1].startswith("2 runs: 0 done, 0 running?, 1 interrupted, 0 failed, 1 not started")


# -- Ray and submitit -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_runs_the_tiny_grid_to_the_same_records(tmp_path, by_hand):
    pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[sweep]')")
    path = _grid(tmp_path)
    outcomes = run_sweep(load_grid(path), "ray", jobs=2)  # a Ray started here, two CPUs
    assert [(o.state, o.action, o.returncode) for o in outcomes] == [("done", "started", 0)] * 2, outcomes
    for seed in (0, 1):
        _same_records(_out(tmp_path, seed), _out(by_hand, seed))


@pytest.mark.slow
def test_submitit_runs_the_tiny_grid_to_the_same_records(tmp_path, by_hand):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[sweep]')")
    path = _grid(tmp_path)
    outcomes = run_sweep(load_grid(path), "submitit", submitit_cluster="local", timeout_min=10)
    assert [(o.state, o.action, o.returncode) for o in outcomes] == [("done", "started", 0)] * 2, outcomes
    for seed in (0, 1):
        _same_records(_out(tmp_path, seed), _out(by_hand, seed))
    assert (tmp_path / "submitit" / "tiny").is_dir()  # the jobs' files, beside the runs


@pytest.mark.slow
def test_a_submitit_job_signalled_before_its_time_limit_saves_and_requeues_to_resume(tmp_path):
    """What submitit does on Slurm's SIGUSR2 (the time limit is near, or the job is preempted), done by hand: the run
    ignores SIGUSR2 itself; the job's ``checkpoint`` stops it with SIGTERM (it saves) and returns the requeued job,
    which resumes it to the end."""
    submitit = pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[sweep]')")
    from companion.sweep import _SubmititRun

    job = _SubmititRun(load_grid(_grid(tmp_path, seeds="[0]", steps=5000)).cells[0])
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=job()))
    thread.start()
    metrics = _out(tmp_path, 0) / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") > 3):
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.2)
    job._process.send_signal(signal.SIGUSR2)  # Slurm signals every process of the job
    time.sleep(0.5)
    assert job._process.poll() is None
    requeued = job.checkpoint()
    thread.join(timeout=120)
    assert (result["outcome"].state, result["outcome"].returncode) == ("interrupted", 0), result
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    outcome = pickle.loads(pickle.dumps(requeued)).result()  # submitit pickles it for the requeued job
    assert (outcome.state, outcome.action) == ("done", "resumed"), outcome


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_run_state_reads_a_run_directory(tmp_path):
    run = tmp_path / "run"
    assert run_state(run).state == "not started"
    run.mkdir()
    host = socket.gethostname()
    (run / STATUS_NAME).write_text(json.dumps({"state": "running", "host": host, "pid": os.getpid()}))
    assert run_state(run).state == "running?" and run_state(run).detail.startswith(f"pid {os.getpid()} on {host}")
    (run / STATUS_NAME).write_text(json.dumps({"state": "running", "host": "elsewhere", "pid": 1}))
    assert run_state(run).state == "running?"  # another host's process cannot be checked
    (run / STATUS_NAME).write_text(json.dumps({"state": "running", "host": host, "pid": _dead_pid()}))
    (run / "config.json").write_text(json.dumps({"run": {"total_steps": 1000}}))
    state = run_state(run)
    assert state.state == "interrupted" and state.detail.endswith("before its first checkpoint (it starts again)")
    (run / STATUS_NAME).write_text(json.dumps({"state": "exited", "returncode": 1}))
    (run / LOG_NAME).write_text("==> first\nTraceback\nValueError: old\n==> second\nsome output\n\nRuntimeError: x\n\n")
    assert run_state(run) == RunState("failed", "exit status 1: RuntimeError: x", False, True)
    (run / STATUS_NAME).write_text(json.dumps({"state": "exited", "returncode": 0}))
    (run / "checkpoint.pt").write_bytes(b"")
    # An interrupted session writes "finished" too: a run is done when its last session ran to the end.
    (run / "meta.json").write_text(json.dumps({"finished": "then", "interrupted": True, "steps": 500}))
    assert run_state(run) == RunState("interrupted", "stopped at step 500", True, True)
    (run / "meta.json").write_text(json.dumps({"finished": "then", "interrupted": False, "steps": 1000}))
    assert run_state(run).state == "done"
    # A run no sweep started, with a fresh checkpoint and no finish: a shell script may be training it.
    (run / STATUS_NAME).unlink()
    (run / "meta.json").unlink()
    assert run_state(run).state == "running?"
    os.utime(run / "checkpoint.pt", (time.time() - 3600, time.time() - 3600))
    assert run_state(run) == RunState("interrupted", "killed after a checkpoint", True, False)


@pytest.mark.slow
def test_a_run_the_sweep_started_and_lost_before_its_first_checkpoint_starts_again(tmp_path, by_hand):
    path = _grid(tmp_path, seeds="[0]")
    run = _out(tmp_path, 0)
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")  # train's first file, then a kill (SIGKILL, a lost node)
    (run / STATUS_NAME).write_text(json.dumps({"state": "running", "host": socket.gethostname(), "pid": _dead_pid()}))
    [outcome] = run_sweep(load_grid(path))
    assert (outcome.state, outcome.action) == ("done", "restarted"), outcome
    _same_records(run, _out(by_hand, 0))
