"""Chapter 7's velocity probe at the book's settings, stored in results/ch7-probe/velocity_probe.json.

Usage: .venv/bin/python experiments/ch7_probe.py   (about a minute on one core)
The SA-DQN transformer and the DRQN LSTM (their CartPole presets, two outputs), each fitted to CartPole's
hidden velocities from 20k steps of random-policy windows of 17 steps, 1,000 Adam steps at lr 1e-3, with and
without the previous action in the input (companion.velocity_probe). The notebook runs a short live version.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.records import save_benchmark  # noqa: E402
from companion.velocity_probe import cartpole_windows, fit_velocity_probe, probe_networks  # noqa: E402

N_STEPS, WINDOW, PROBE_STEPS = 20_000, 17, 1_000


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    states, previous = cartpole_windows(N_STEPS, WINDOW, seed=0)
    rows = []
    for with_action in (False, True):
        for name, net in probe_networks(with_action, WINDOW).items():
            r2 = fit_velocity_probe(net, states, previous, PROBE_STEPS, with_action=with_action)
            rows.append({"network": name, "previous_action": with_action, "r2_cart_velocity": round(float(r2[0]), 4),
                         "r2_pole_velocity": round(float(r2[1]), 4)})
            print(rows[-1])
    out = Path(__file__).resolve().parents[1] / "results" / "ch7-probe"
    path = save_benchmark("velocity_probe", rows, "cpu", out, windows=len(states), window=WINDOW,
                          probe_steps=PROBE_STEPS, env_steps=N_STEPS, lr=1e-3,
                          wall_seconds=round(time.perf_counter() - start, 1))
    print("saved", path)


if __name__ == "__main__":
    main()
