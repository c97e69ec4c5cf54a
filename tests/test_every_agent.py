"""What every registered agent owes the harness (issue 14, items 14 and 15): it acts in eval mode and
leaves its network in training mode, the same seed gives the same records, and what it saves loads back
to the same policy (DARQN-hard's sampling included), the committed ``policy.pt`` files among them."""

import dataclasses
import filecmp
import glob
import os

import numpy as np
import pytest
import torch

from companion.agents import AGENTS, SADQN
from companion.train import build_config, load_agent, make_run_env, saved_config, train

CPU = torch.device("cpu")
IMAGE_AGENTS = {"darqn", "sadqn-entity"}
ON_POLICY = {"n_envs": 2, "n_steps": 32, "batch_size": 64, "n_epochs": 1}
OFF_POLICY = {"learning_starts": 100, "train_freq": 4, "gradient_steps": 1, "batch_size": 8}
CASES = sorted(AGENTS) + ["darqn-hard"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _algo_env(case):
    algo = "darqn" if case == "darqn-hard" else case
    return algo, ("MinAtar/Breakout-v1" if algo in IMAGE_AGENTS else "CartPole-v1")


def _overrides(case):
    algo, _ = _algo_env(case)
    overrides = dict(ON_POLICY if AGENTS[algo].loop == "on_policy" else OFF_POLICY)
    if case == "darqn-hard":
        overrides["attention"] = "hard"
    if algo == "nec":
        overrides = {k: v for k, v in overrides.items() if k != "train_freq"}
    return overrides


def _run(tmp_path, name, case, total_steps=400, **kwargs):
    algo, env_id = _algo_env(case)
    run, config = build_config(algo, env_id, seed=2, budget="quick", total_steps=total_steps,
                               overrides={"eval_every": 200, "eval_episodes": 1, **_overrides(case)})
    return train(run, config, tmp_path / name, show_progress=False, **kwargs)


def _fresh_agent(case, **changes):
    algo, env_id = _algo_env(case)
    run, config = build_config(algo, env_id, budget="quick")
    config = dataclasses.replace(config, **{**{k: v for k, v in _overrides(case).items()
                                                if hasattr(config, k)}, **changes})
    env = make_run_env(run, config)
    obs, _ = env.reset(seed=0)
    torch.manual_seed(0)
    agent = AGENTS[algo](env.observation_space.shape, int(env.action_space.n), config, CPU)
    return agent, env, obs


@pytest.mark.parametrize("case", CASES)
def test_acts_in_eval_mode_and_trains_in_training_mode(case):
    """As SB3's test_train_eval_mode: acting sees every module in eval mode, training afterwards."""
    agent, env, obs = _fresh_agent(case)
    network = agent.policy_network()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda module, args: seen.append(module.training))
             for m in network.modules()]
    state = agent.initial_state()
    rng = np.random.default_rng(0)
    for _ in range(3):
        action, state = agent.act(obs, state, 0.0, rng)
        obs, *_ = env.step(action)
    for h in hooks:
        h.remove()
    env.close()
    assert seen and not any(seen), f"{case}: a module acted in training mode"
    assert all(m.training for m in network.modules()), f"{case}: acting left the network in eval mode"


def test_dropout_does_not_make_greedy_actions_random():
    """Regression: SA-DQN (and DQN) acted under inference_mode without eval(): with dropout, 200 greedy calls
    on one observation spread over every action."""
    config = dataclasses.replace(SADQN.preset("gym"), dropout=0.5)
    torch.manual_seed(0)
    agent = SADQN((4,), 4, config, CPU)
    obs = np.ones(4, np.float32)
    rng = np.random.default_rng(0)
    assert len({agent.act(obs, None, 0.0, rng)[0] for _ in range(200)}) == 1


@pytest.mark.parametrize("case", CASES)
def test_same_seed_same_records_and_saved_policies_load_back(tmp_path, case):
    first = _run(tmp_path, "a", case)
    _run(tmp_path, "b", case)
    for name in ("metrics.csv", "eval.csv", "updates.csv", "policy.pt"):
        if (tmp_path / "a" / name).exists() or name != "updates.csv":
            assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), (case, name)
    from_checkpoint, _, _ = load_agent(tmp_path / "a")
    (tmp_path / "b" / "checkpoint.pt").unlink()
    from_policy, _, _ = load_agent(tmp_path / "b")  # what a fresh clone has
    reference = first.agent.policy_state_dict()
    for loaded in (from_checkpoint, from_policy):
        state = loaded.policy_state_dict()
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference), case
    # The same acting, sampling included (DARQN-hard draws its locations from torch's generator).
    run, config = saved_config(tmp_path / "a")
    actions = []
    for agent in (first.agent, from_checkpoint, from_policy):
        env = make_run_env(run, config)
        obs, _ = env.reset(seed=7)
        torch.manual_seed(7)
        rng = np.random.default_rng(7)
        state, taken = agent.initial_state(), []
        for _ in range(20):
            action, state = agent.act(obs, state, 0.0, rng)
            taken.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        env.close()
        actions.append(taken)
    assert actions[0] == actions[1] == actions[2], case


@pytest.mark.parametrize("case", ["darqn-hard", "sadqn", "sadqn-entity"])
def test_resume_equals_an_uninterrupted_run(tmp_path, case):
    """DQN, DRQN (tests/test_train.py), NEC and the on-policy agents have theirs; these are the rest."""
    _run(tmp_path, "whole", case, total_steps=1100)  # updates.csv gets a row every 1000 steps
    part = _run(tmp_path, "part", case, total_steps=1100, stop_at=500)
    assert part.interrupted
    train(None, None, tmp_path / "part", resume=True, show_progress=False)
    for name in ("metrics.csv", "eval.csv", "updates.csv", "policy.pt"):
        assert filecmp.cmp(tmp_path / "whole" / name, tmp_path / "part" / name, shallow=False), (case, name)


COMMITTED = sorted(glob.glob(os.path.join(ROOT, "results", "**", "policy.pt"), recursive=True))


@pytest.mark.parametrize("path", COMMITTED, ids=[os.path.relpath(p, ROOT) for p in COMMITTED])
def test_committed_policies_load_and_act(path):
    """The policies the chapters draw from load into today's agents (a changed network shape fails here
    before it fails in a chapter)."""
    run_dir = os.path.dirname(path)
    run, config = saved_config(run_dir)
    env = make_run_env(run, config)
    agent = AGENTS[run.algo](env.observation_space.shape, int(env.action_space.n), config, CPU)
    agent.load_policy_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    obs, _ = env.reset(seed=0)
    action, _ = agent.act(obs, agent.initial_state(), 0.0, np.random.default_rng(0))
    env.close()
    assert 0 <= action < env.action_space.n
