"""Milliseconds per DARQN update (forward + backward + optimizer step), MinAtar and Atari sizes.

Run by hand: ``.venv/bin/python benchmarks/darqn_update.py [--device cpu|cuda] [--threads N] [--save]``;
``--save`` writes ``results/benchmarks/darqn_update[_DEVICE].json`` with its provenance (chapter 6 reads it).
Batch 32 sequences; Atari: ``atari_paper`` (1x84x84 frames, 49 locations, LSTM 256, unroll 4);
MinAtar: the ``MinAtar`` preset (4x10x10, 64 locations, LSTM 128, unroll 8). Soft and hard attention.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.agents import DARQN  # noqa: E402
from companion.cost import time_call  # noqa: E402
from companion.records import save_benchmark  # noqa: E402


def measure(obs_shape: tuple[int, ...], config, device: torch.device, n_actions: int = 18) -> float:
    agent = DARQN(obs_shape, n_actions, config, device)
    buffer = agent.make_buffer(np.uint8, seed=0)
    rng = np.random.default_rng(0)
    for t in range(max(64, config.seq_len * 8)):
        obs = rng.integers(0, 255 if obs_shape[1] == 84 else 2, obs_shape, dtype=np.uint8)
        buffer.add(obs, int(rng.integers(n_actions)), 0.0, obs, False, t % 50 == 49)
    return 1e3 * time_call(lambda: agent.update(buffer), min_run_time=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--save", action="store_true", help="write the figures to results/benchmarks/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, batch 32")
    rows = []
    for name, obs_shape, base in (("MinAtar", (4, 10, 10), DARQN.preset("MinAtar")),
                                  ("Atari", (1, 84, 84), DARQN.atari_paper())):
        for attention in ("soft", "hard"):
            config = dataclasses.replace(base, attention=attention, buffer_size=1_000, batch_size=32)
            ms = measure(obs_shape, config, device)
            rows.append(dict(config=name, attention=attention, ms=round(ms, 2), lstm=config.lstm_size,
                             unroll=config.seq_len, obs_shape=list(obs_shape)))
            print(f"{name:8s} {attention}: {ms:7.1f} ms per update (LSTM {config.lstm_size}, unroll {config.seq_len})")
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("darqn_update", rows, device, out, batch_size=32))


if __name__ == "__main__":
    main()
