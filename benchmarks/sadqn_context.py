"""What SA-DQN's context length K costs, next to DRQN's constant-size state (book chapter 7).

Run by hand on an otherwise idle machine:
``.venv/bin/python benchmarks/sadqn_context.py [--threads 1] [--device cpu] [--save]``; ``--save`` writes
``results/benchmarks/sadqn_context[_DEVICE].json`` with its provenance.

For each K (the training window ``seq_len``, and the most observations the agent acts on), on CartPole
with the chapter 2 preset: milliseconds per update (batch 32 windows of K steps, online and target
passes, backward, step) and per action (one forward pass over a full context; DRQN steps its LSTM once).
An update reads K + 1 positions that attend causally, so its attention costs O(K^2) per window while its
MLPs cost O(K); acting re-reads the whole context at every step, O(K^2), where DRQN's step is O(1).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from update_cost import benchmark_args, measure  # noqa: E402

from companion.agents import AGENTS  # noqa: E402
from companion.cost import time_call  # noqa: E402
from companion.records import save_benchmark  # noqa: E402
from companion.train import build_config  # noqa: E402

CONTEXTS = (2, 4, 8, 16, 32, 64)
ENV_ID = "CartPole-v1"


def ms_per_action(algo: str, overrides: dict, device: torch.device, min_run_time: float) -> float:
    """One greedy action with a full acting state: SA-DQN's context of K observations, DRQN's LSTM."""
    _, config = build_config(algo, ENV_ID, overrides=overrides)
    agent = AGENTS[algo]((4,), 2, config, device)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((200, 4)).astype(np.float32)
    state = agent.initial_state()
    for o in obs[:-1]:  # fill the state: the context reaches its full length
        _, state = agent.act(o, state, 0.0, rng)
    return 1e3 * time_call(lambda: agent.act(obs[-1], state, 0.0, rng), min_run_time=min_run_time)


def main() -> None:
    args, device = benchmark_args(__doc__.splitlines()[0])
    cases = [("SA-DQN", "sadqn", {"seq_len": k}) for k in CONTEXTS] + [("DRQN", "drqn", {"seq_len": 16})]
    rows = []
    for label, algo, overrides in cases:
        row = {"agent": label, "algo": algo, "env_id": ENV_ID, "K": overrides["seq_len"],
               **measure(algo, ENV_ID, overrides, device, args.min_run_time),
               "ms_per_action": round(ms_per_action(algo, overrides, device, args.min_run_time), 3)}
        rows.append(row)
        print(f"{label:7s} K={row['K']:3d} {row['parameters']:>8,} parameters {row['ms_per_update']:7.2f} ms/update "
              f"{row['ms_per_action']:6.3f} ms/action")
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("sadqn_context", rows, device, out))


if __name__ == "__main__":
    main()
