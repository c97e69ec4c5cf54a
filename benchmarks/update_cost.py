"""Parameters and milliseconds per update of every agent, on the tasks the chapters compare them on.

Run by hand on an otherwise idle machine:
``.venv/bin/python benchmarks/update_cost.py [--threads 1] [--device cpu] [--save]``; ``--save`` writes
``results/benchmarks/update_cost[_DEVICE].json`` with its provenance. One update = sample a batch,
forward (online and target), backward, optimizer step, with each agent's preset for the env family
(MinAtar: batch 32; recurrent and attention agents on 8-step windows; classic control: the chapter 2
presets). The replay is filled by a random policy in the real env.

A second table, in the same run, is SA-DQN's context length K on CartPole (book chapter 7.5): ms per
update and per action (one forward pass over a full context; DRQN steps its LSTM once) for each K. An
update reads K positions per window, twice for the next-state values; attention costs O(K^2) per
window, the MLPs O(K); acting re-reads the whole context at every step, where DRQN's step is O(1). The
rows at the preset's K = 16, and DRQN's, are the first table's measurements: one measurement, one number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.agents import AGENTS  # noqa: E402
from companion.cost import time_call  # noqa: E402
from companion.records import save_benchmark  # noqa: E402
from companion.train import build_config, make_run_env  # noqa: E402

CASES = [  # (label, algo, env_id, overrides)
    ("DQN", "dqn", "CartPole-v1", {}),
    ("DQN, 4 stacked", "dqn", "CartPole-v1", {"frame_stack": 4}),
    ("DRQN", "drqn", "CartPole-v1", {}),
    ("SA-DQN", "sadqn", "CartPole-v1", {}),
    ("DQN, 4 stacked", "dqn", "MinAtar/Breakout-v1", {"frame_stack": 4, "batch_size": 32}),
    ("DRQN", "drqn", "MinAtar/Breakout-v1", {}),
    ("DARQN-soft", "darqn", "MinAtar/Breakout-v1", {"attention": "soft"}),
    ("DARQN-hard", "darqn", "MinAtar/Breakout-v1", {"attention": "hard"}),
    ("SA-DQN", "sadqn", "MinAtar/Breakout-v1", {}),
    ("SA-DQN entity", "sadqn-entity", "MinAtar/Breakout-v1", {}),
]
CONTEXTS = (2, 4, 8, 16, 32, 64)  # SA-DQN's K on CartPole; 16 is the preset


def measure(algo: str, env_id: str, overrides: dict, device: torch.device, min_run_time: float) -> dict:
    run, config = build_config(algo, env_id, overrides={**overrides, "buffer_size": 2_000})
    env = make_run_env(run, config)
    agent = AGENTS[algo](env.observation_space.shape, int(env.action_space.n), config, device)
    buffer = agent.make_buffer(env.observation_space.dtype, seed=0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(1_000):
        next_obs, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        buffer.add(obs, 0, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    ms = 1e3 * time_call(lambda: agent.update(buffer), min_run_time=min_run_time)
    window = config.burn_in + config.seq_len if AGENTS[algo].sequence_replay else None  # feed-forward: none
    return {"parameters": agent.num_parameters(), "ms_per_update": round(ms, 2), "batch_size": config.batch_size,
            "window": window}


def ms_per_action(algo: str, env_id: str, overrides: dict, device: torch.device, min_run_time: float) -> float:
    """One greedy action with a full acting state: SA-DQN's context of K observations, DRQN's LSTM."""
    run, config = build_config(algo, env_id, overrides=overrides)
    env = make_run_env(run, config)
    agent = AGENTS[algo](env.observation_space.shape, int(env.action_space.n), config, device)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((200, *env.observation_space.shape)).astype(np.float32)
    state = agent.initial_state()
    for o in obs[:-1]:  # fill the state: the context reaches its full length
        _, state = agent.act(o, state, 0.0, rng)
    return 1e3 * time_call(lambda: agent.act(obs[-1], state, 0.0, rng), min_run_time=min_run_time)


def benchmark_args(description: str) -> tuple[argparse.Namespace, torch.device]:
    """The command line the timing benchmarks share: ``--device``, ``--threads``, ``--min-run-time``,
    ``--save``; sets the thread count and prints what the timings ran on."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per case")
    parser.add_argument("--save", action="store_true", help="write the table to results/benchmarks/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s)")
    return args, device


def main() -> None:
    args, device = benchmark_args(__doc__.splitlines()[0])
    rows = []
    for label, algo, env_id, overrides in CASES:
        row = {"table": "agents", "agent": label, "algo": algo, "env_id": env_id, "overrides": overrides,
               **measure(algo, env_id, overrides, device, args.min_run_time)}
        rows.append(row)
        print(f"{env_id:22s} {label:15s} {row['parameters']:>9,} parameters {row['ms_per_update']:8.2f} ms/update")
    measured = {(r["algo"], r["env_id"], r["window"]): r for r in rows}
    context = "CartPole-v1"
    for label, algo, k in [("SA-DQN", "sadqn", k) for k in CONTEXTS] + [("DRQN", "drqn", 16)]:
        overrides = {"seq_len": k}
        same = measured.get((algo, context, k))  # the preset's K: the row above, not a second measurement
        cost = same if same else measure(algo, context, overrides, device, args.min_run_time)
        row = {"table": "context", "agent": label, "algo": algo, "env_id": context, "K": k,
               "parameters": cost["parameters"], "ms_per_update": cost["ms_per_update"],
               "ms_per_action": round(ms_per_action(algo, context, overrides, device, args.min_run_time), 3)}
        rows.append(row)
        print(f"{context:22s} {label:7s} K={k:3d} {row['ms_per_update']:8.2f} ms/update "
              f"{row['ms_per_action']:6.3f} ms/action")
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("update_cost", rows, device, out))


if __name__ == "__main__":
    main()
