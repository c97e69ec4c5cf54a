"""Bad input and interrupted work, tried as a new user would (issue 15, items 3-6): counts that make no sense
are refused on one line; a damaged checkpoint is named, not a traceback; a resume that contradicts the run's
config.json is refused, and one of a finished run says so; a run killed (SIGKILL) at any moment of writing
a checkpoint resumes to the records of a run that was never killed."""

import dataclasses
import filecmp
import os
import signal
import subprocess
import sys

import pytest
import torch

import companion.records as records
from companion.__main__ import main
from companion.records import DamagedRunError, RunDir
from companion.train import build_config, check_resume, load_agent, train

# Small runs: a checkpoint every 200 steps, an evaluation every 500, a row of updates.csv at 1000.
OFF_POLICY = ["--set", "learning_starts=100", "--set", "batch_size=8", "--set", "train_freq=4", "--set",
              "gradient_steps=1"]
ON_POLICY = ["--set", "n_envs=2", "--set", "n_steps=32", "--set", "batch_size=64", "--set", "n_epochs=1"]
SMALL = ["--budget", "quick", "--steps", "1100", "--seed", "2", "--set", "eval_every=500", "--set", "eval_episodes=1",
         "--set", "checkpoint_every=200", "--no-progress"]
RECORDS = ("metrics.csv", "eval.csv", "updates.csv", "policy.pt")


def _train_argv(algo, out, *extra):
    settings = ON_POLICY if algo.startswith("ppo") else OFF_POLICY
    hide = ["--hide", "1,3"] if algo != "dqn" else []
    return ["train", "--algo", algo, "--env", "CartPole-v1", *hide, *SMALL, *settings, *extra, "--out", str(out)]


def _one_line_error(capsys, argv, status=2):
    """Run the CLI in this process; return its error line, checking the exit status and that it is one line."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == status, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# -- item 3: counts a user types --------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--steps", "-5"],
     "python -m companion train: error: argument --steps: expected a positive integer, got '-5'"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--steps", "0"], "--steps: expected a positive integer"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--steps", "1.5"], "--steps: expected a positive integer"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--seed", "-1"], "--seed: expected an integer of 0 or more"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--stop-at", "0"], "--stop-at: expected a positive integer"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--flicker", "1.5"], "--flicker: expected a probability"),
    (["train", "--algo", "dqn", "--env", "CartPole-v1", "--hide", "-1"], "--hide: expected observation indices"),
    (["eval", "runs/x", "--episodes", "0"], "python -m companion eval: error: argument --episodes: expected a"),
    (["eval", "runs/x", "--epsilon", "2"], "--epsilon: expected a probability"),
    (["train", "--env", "CartPole-v1"], "error: train needs --algo and --env"),
])
def test_cli_refuses_counts_that_make_no_sense(capsys, argv, expected):
    assert expected in _one_line_error(capsys, argv)


def test_cli_accepts_counts_written_as_a_person_would():
    from companion.__main__ import build_parser

    args = build_parser().parse_args(["train", "--algo", "dqn", "--env", "CartPole-v1", "--steps", "1e5",
                                      "--seed", "0", "--hide", "1,3"])
    assert (args.steps, args.seed, args.hide) == (100_000, 0, (1, 3))
    assert build_parser().parse_args(["train", "--algo", "dqn", "--env", "x", "--steps", "100_000"]).steps == 100_000


@pytest.mark.parametrize(("kwargs", "expected"), [
    (dict(total_steps=-5), "total_steps=-5: expected a positive integer"),
    (dict(seed=-1), "seed=-1: expected an integer of 0 or more"),
    (dict(overrides={"eval_episodes": "-1"}), "eval_episodes=-1: expected a positive integer"),
    (dict(overrides={"checkpoint_every": "-100"}), "checkpoint_every=-100"),
    (dict(overrides={"batch_size": "-8"}), "batch_size=-8: expected an integer of 0 or more"),
    (dict(overrides={"flicker": "1.5"}), "flicker=1.5: expected a probability"),
])
def test_build_config_refuses_counts_that_make_no_sense(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        build_config("dqn", "CartPole-v1", budget="quick", **kwargs)


def test_cli_refuses_a_negative_setting_on_one_line(capsys, tmp_path):
    argv = _train_argv("dqn", tmp_path / "run", "--set", "eval_episodes=-1")
    assert "error: setting eval_episodes=-1: expected a positive integer" in _one_line_error(capsys, argv)
    assert not (tmp_path / "run").exists()


# -- item 4: damaged checkpoints -----------------------------------------------------------------------------
def _fabricated_run(path, algo="dqn"):
    """A run directory with its config and no training: enough for eval to get as far as the checkpoint."""
    run, agent = build_config(algo, "CartPole-v1", budget="quick")
    return RunDir.create(path, {"run": dataclasses.asdict(run), "agent": dataclasses.asdict(agent)})


def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "cut short": data[:100], "empty": b"",
                      "garbage": b"\x00not a checkpoint" * 50}[how])


def test_eval_of_a_damaged_checkpoint_is_one_line(tmp_path):
    run = _fabricated_run(tmp_path / "run")
    torch.save({"agent": {"q": torch.zeros(1000)}, "loop": {"step": 1}}, run.checkpoint_path)
    _damage(run.checkpoint_path, "truncated")
    proc = subprocess.run([sys.executable, "-m", "companion", "eval", str(run.path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"error: {run.checkpoint_path} is damaged (truncated or corrupted) and cannot be loaded\n"


@pytest.mark.parametrize("how", ["cut short", "empty", "garbage"])
def test_a_damaged_checkpoint_is_named_whatever_the_damage(tmp_path, capsys, how):
    run = _fabricated_run(tmp_path / "run")
    torch.save({"agent": {"q": torch.zeros(1000)}, "loop": {"step": 1}}, run.checkpoint_path)
    _damage(run.checkpoint_path, how)
    with pytest.raises(DamagedRunError, match="checkpoint.pt is damaged"):
        load_agent(run.path)
    assert _one_line_error(capsys, ["eval", str(run.path)], status=1).endswith("is damaged (truncated or corrupted) "
                                                                               "and cannot be loaded")


def test_a_file_that_loads_but_is_no_checkpoint_is_damaged_too(tmp_path):
    run = _fabricated_run(tmp_path / "run")
    torch.save({"obs": torch.zeros(3)}, run.checkpoint_path)  # e.g. a replay.pt copied over it
    with pytest.raises(DamagedRunError, match="holds no 'agent'"):
        load_agent(tmp_path / "run")


def test_damaged_config_is_one_line(capsys, tmp_path):
    run = _fabricated_run(tmp_path / "run")
    run.config_path.write_text('{"run": {"algo": "dq')
    err = _one_line_error(capsys, ["eval", str(run.path)], status=1)
    assert err == f"error: {run.config_path} is damaged (not valid JSON) and cannot be read"


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    """On-policy (no replay buffer to match): a damaged checkpoint.pt is passed over for checkpoint.prev.pt,
    and the run still ends as an uninterrupted one."""
    assert main(_train_argv("ppo-lstm", tmp_path / "whole")) == 0
    assert main(_train_argv("ppo-lstm", tmp_path / "part", "--stop-at", "600")) == 0
    part = RunDir(tmp_path / "part")
    previous = torch.load(part.previous_checkpoint_path, weights_only=True)["loop"]["step"]
    assert previous < torch.load(part.checkpoint_path, weights_only=True)["loop"]["step"]
    _damage(part.checkpoint_path, "truncated")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(part.path), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err == (f"resuming from {part.previous_checkpoint_path} (step {previous}): {part.checkpoint_path} is "
                   f"damaged (truncated or corrupted) and cannot be loaded\n")
    for name in RECORDS:
        assert filecmp.cmp(tmp_path / "whole" / name, part.path / name, shallow=False), name


def test_resume_without_a_usable_checkpoint_says_how_to_start_again(tmp_path, capsys):
    """Off-policy: checkpoint.prev.pt belongs with the replay buffer before the one in place, so a damaged
    checkpoint.pt (or replay.pt) cannot be resumed exactly."""
    assert main(_train_argv("dqn", tmp_path / "run", "--stop-at", "500")) == 0
    run = RunDir(tmp_path / "run")
    replay = run.replay_path.read_bytes()
    run.checkpoint_path.write_bytes(b"")
    err = _one_line_error(capsys, ["train", "--resume", "--out", str(run.path)], status=1)
    assert err.startswith(f"error: cannot resume {run.path} exactly: {run.checkpoint_path} is damaged")
    assert "checkpoint.prev.pt (step " in err
    assert "needs the replay buffer saved with it, and replay.pt holds step" in err
    assert err.endswith(f"remove {run.path} (or choose another --out) to start the run again")
    run.replay_path.write_bytes(replay[:100])
    err = _one_line_error(capsys, ["train", "--resume", "--out", str(run.path)], status=1)
    assert err == (f"error: {run.replay_path} is damaged (truncated or corrupted) and cannot be loaded; remove "
                   f"{run.path} (or choose another --out) to start the run again")
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run.path / name).unlink()
    err = _one_line_error(capsys, ["train", "--resume", "--out", str(run.path)])
    assert err == (f"error: {run.path} has no checkpoint to resume from (the run stopped before its first); "
                   f"remove {run.path} (or choose another --out) to start the run again")


# -- item 5: a resume that contradicts the run, and one of a finished run -----------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Runs that were never interrupted, by algorithm, each made once."""
    made = {}

    def get(algo):
        if algo not in made:
            made[algo] = tmp_path_factory.mktemp(algo) / "whole"
            assert main(_train_argv(algo, made[algo])) == 0
        return made[algo]

    return get


@pytest.fixture
def finished_run(uninterrupted):
    return uninterrupted("dqn")


def _contents(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_resume_with_other_settings_is_refused(finished_run, capsys):
    before = _contents(finished_run)
    err = _one_line_error(capsys, ["train", "--resume", "--algo", "drqn", "--env", "MinAtar/Breakout-v1", "--out",
                                   str(finished_run)])
    assert err == (f"error: {finished_run}/config.json holds other settings: algo is 'dqn' there, 'drqn' here; "
                   f"env_id is 'CartPole-v1' there, 'MinAtar/Breakout-v1' here. To resume the run, give --resume "
                   f"--out {finished_run} alone; to start another, choose another --out")
    for extra, named in ((["--seed", "3"], "seed is 2 there, 3 here"), (["--steps", "2000"], "total_steps is 1100"),
                         (["--hide", "1,3"], "hide is () there, (1, 3) here"), (["--set", "lr=0.5"], "lr is"),
                         (["--budget", "book"], "budget is 'quick' there"),
                         (["--set", "eval_every=400"], "eval_every is 500 there, '400' here")):
        err = _one_line_error(capsys, ["train", "--resume", "--algo", "dqn", "--env", "CartPole-v1", "--out",
                                       str(finished_run), *extra])
        assert named in err, err
    assert _contents(finished_run) == before  # nothing was touched


def test_check_resume_compares_only_what_was_given(finished_run):
    lr = RunDir(finished_run).config()["agent"]["lr"]
    check_resume(finished_run, {"lr": f"{lr:e}", "learning_starts": "1e2"}, algo="dqn", env_id="CartPole-v1", seed=2,
                 budget="quick", total_steps=1100, hide=None, flicker=None)
    with pytest.raises(ValueError, match="unknown setting 'learning_rate'"):
        check_resume(finished_run, {"learning_rate": "1"})


def test_resuming_a_finished_run_says_so_and_trains_no_further(finished_run, capsys):
    before = _contents(finished_run)
    last = RunDir(finished_run).last_eval()
    meta = RunDir(finished_run).meta()
    capsys.readouterr()
    assert main(["train", "--resume", "--algo", "dqn", "--env", "CartPole-v1", "--out", str(finished_run),
                 "--no-progress"]) == 0
    assert capsys.readouterr().out == (f"already finished, nothing to resume: 1100 steps, {meta['episodes']} episodes, "
                                       f"last evaluation {last:.1f}; run directory {finished_run}\n")
    assert _contents(finished_run) == before
    result = train(None, None, finished_run, resume=True, show_progress=False)
    assert result.already_finished and result.final_eval == last and result.steps == 1100


# -- item 6: killed while writing a checkpoint -------------------------------------------------------------
# The CLI in a subprocess that kills itself (SIGKILL: no handler, no cleanup) just before the file it names is
# put in place by os.replace, the last step of every atomic write in companion.records; the occurrence counts
# the writes of that file. A checkpoint's writes, in order: the old checkpoint.pt becomes checkpoint.prev.pt,
# the new one becomes checkpoint.pt, the new buffer becomes replay.pt.
KILLER = """
import os, signal, sys
from companion.__main__ import main

name, occurrence = sys.argv[1], int(sys.argv[2])
replace, seen = os.replace, 0

def replace_or_die(src, dst):
    global seen
    if os.path.basename(dst) == name:
        seen += 1
        if seen == occurrence:
            os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)

os.replace = replace_or_die
sys.exit(main(sys.argv[3:]))
"""


def _kill_while_saving(algo, out, name, occurrence):
    proc = subprocess.run([sys.executable, "-c", KILLER, name, str(occurrence), *_train_argv(algo, out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize(("algo", "name", "occurrence", "resumes_from"), [
    ("dqn", "replay.pt", 3, "checkpoint.prev.pt"),  # the new checkpoint written, its buffer not: the pair before
    ("dqn", "checkpoint.pt", 3, "checkpoint.prev.pt"),  # the old checkpoint moved aside, the new one not in place
    ("dqn", "checkpoint.prev.pt", 2, "checkpoint.pt"),  # the new checkpoint written to its temporary file only
    ("dqn", "policy.pt", 1, "checkpoint.pt"),  # after the last checkpoint: the end of the run is written on resume
    ("drqn", "replay.pt", 3, "checkpoint.prev.pt"),
    ("ppo-lstm", "checkpoint.pt", 3, "checkpoint.prev.pt"),  # no replay buffer; the envs replay their episodes
])
def test_killed_while_saving_resumes_to_an_uninterrupted_run(tmp_path, capsys, uninterrupted, algo, name, occurrence,
                                                             resumes_from):
    out = tmp_path / "killed"
    _kill_while_saving(algo, out, name, occurrence)
    run = RunDir(out)
    if name == "replay.pt":  # the state the kill left: a checkpoint whose buffer is not the one in place
        assert torch.load(run.checkpoint_path, weights_only=True)["replay_step"] != \
            torch.load(run.replay_path, weights_only=True)["checkpoint_step"]
    assert run.load_checkpoint().path.name == resumes_from
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("done: ")
    for record in RECORDS:
        assert filecmp.cmp(uninterrupted(algo) / record, out / record, shallow=False), record


def test_killed_again_while_resuming_still_resumes(tmp_path, uninterrupted):
    """A resume from checkpoint.prev.pt makes it the checkpoint again: a second kill, in the first save after
    the resume, falls back to it once more (had the passed-over checkpoint.pt been moved aside to
    checkpoint.prev.pt, no checkpoint would match the replay buffer)."""
    out = tmp_path / "killed"
    _kill_while_saving("dqn", out, "replay.pt", 3)
    proc = subprocess.run([sys.executable, "-c", KILLER, "replay.pt", "1", "train", "--resume", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL and "resuming from" in proc.stderr, proc.stderr
    assert RunDir(out).load_checkpoint().path.name == "checkpoint.prev.pt"
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    for record in RECORDS:
        assert filecmp.cmp(uninterrupted("dqn") / record, out / record, shallow=False), record


@pytest.mark.parametrize(("name", "step_loaded"), [
    ("checkpoint.prev.pt", 10),  # the second checkpoint written to its temporary file only
    ("checkpoint.pt", 10),  # the first checkpoint moved to checkpoint.prev.pt, the second not in place
    ("replay.pt", 10),  # the second checkpoint in place, its replay buffer not
    (None, 20),  # not killed
])
def test_checkpoint_pairs_survive_a_kill_at_every_write(tmp_path, monkeypatch, name, step_loaded):
    """The kill points above, in this process and without training (an exception stands for the kill, just
    before ``name`` is put in place while the second checkpoint is written): the checkpoint loaded is always
    the one whose replay buffer is in place."""
    run = _fabricated_run(tmp_path / "run")
    run.save_checkpoint({"loop": {"step": 10}}, {"obs": torch.zeros(2)}, step=10)
    replace = os.replace

    class Killed(Exception):
        pass

    def replace_or_die(src, dst):
        if os.path.basename(dst) == name:
            raise Killed
        replace(src, dst)

    monkeypatch.setattr(records.os, "replace", replace_or_die)
    try:
        run.save_checkpoint({"loop": {"step": 20}}, {"obs": torch.ones(2)}, step=20)
    except Killed:
        pass
    monkeypatch.undo()
    loaded = run.load_checkpoint()
    assert loaded.state["loop"]["step"] == step_loaded
    assert torch.equal(loaded.replay["obs"], torch.full((2,), float(step_loaded == 20)))
    assert "checkpoint_step" not in loaded.replay  # the buffer as it was saved
    assert bool(loaded.passed_over) == (name == "replay.pt")


def test_run_directories_from_before_the_steps_were_recorded_still_resume(tmp_path):
    """Checkpoints and buffers written before ``replay_step`` and ``checkpoint_step`` existed pair as they are."""
    run = _fabricated_run(tmp_path / "run")
    torch.save({"loop": {"step": 10}}, run.checkpoint_path)
    torch.save({"obs": torch.zeros(2)}, run.replay_path)
    loaded = run.load_checkpoint()
    assert loaded.state["loop"]["step"] == 10 and loaded.path == run.checkpoint_path and not loaded.passed_over


def test_a_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    run = _fabricated_run(tmp_path / "run")
    run.append("metrics", (0, 12, "12", 12))
    with open(run.metrics_path, "a") as f:
        f.write("1,3")  # the start of a row: "1,30,18,18"
    run.truncate_after(30)
    assert run.metrics_path.read_text() == "episode,step,return,length\n0,12,12,12\n"
