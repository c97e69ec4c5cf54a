"""Chapter 3's critic probe: one behaviour policy, one data set, critics that differ only in what they read.

    .venv/bin/python experiments/ch3_probe.py [--seeds 0 1 2]

For each seed, and with and without the previous action in the observation, :func:`companion.critic_probe.probe_all`
collects CartPole episodes (velocities hidden) with a noisy heuristic that reads the true state, fits the
critics ``current``, ``stack4``, ``lstm``, ``attention`` and the reference ``state`` to the discounted returns,
and scores them on held-out episodes. Writes ``results/ch3-probe/critic_probe.json`` with provenance
(command, commit, versions, hardware). One torch thread; about half a minute of CPU per probe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.critic_probe import KINDS, probe_all  # noqa: E402
from companion.records import save_benchmark  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, began = [], time.perf_counter()
    for seed in args.seeds:
        for prev_action in (False, True):
            report = probe_all(prev_action=prev_action, kinds=(*KINDS, "state"), seed=seed)
            for kind, result in report.results.items():
                rows.append({"seed": seed, "prev_action": prev_action, "kind": kind,
                             "explained_variance": round(result.explained_variance, 4),
                             "rmse": round(result.rmse, 4), "constant_rmse": round(result.constant_rmse, 4),
                             "train_rmse": round(result.train_rmse, 4), "seconds": round(result.seconds, 1),
                             "train_steps": report.train.steps, "test_steps": report.test.steps})
                print(f"seed {seed} prev_action {prev_action!s:5s} {kind:9s} EV {result.explained_variance:.3f} "
                      f"RMSE {result.rmse:.2f} (constant {result.constant_rmse:.2f})", flush=True)
    out = Path(__file__).resolve().parents[1] / "results" / "ch3-probe"
    path = save_benchmark("critic_probe", rows, "cpu", out, wall_seconds=round(time.perf_counter() - began),
                          task="CartPole-v1, velocities hidden; behaviour: cartpole_heuristic(epsilon=0.5); 200 "
                               "training and 100 test episodes; gamma 0.98; truncated episodes keep the steps 200 or "
                               "more before the cut")
    print("saved", path)


if __name__ == "__main__":
    main()
