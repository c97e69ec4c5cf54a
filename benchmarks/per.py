"""What prioritized replay costs per batch, next to uniform replay, from 10k to 1M transitions (book chapter 4).

Run by hand on an otherwise idle machine: ``.venv/bin/python benchmarks/per.py [--min-run-time 1] [--save]``;
``--save`` writes ``results/benchmarks/per.json`` with its provenance.

For each capacity N and two observation shapes (CartPole's 4 float32, MinAtar's 10x10x4 uint8 frames), a full
buffer is timed on one batch of 32:

- ``uniform``: :meth:`ReplayBuffer.sample` (draw 32 slots, gather the transitions);
- ``prioritized``: :meth:`PrioritizedReplayBuffer.sample` (32 stratified queries down the sum tree, the importance
  weights from the min tree, the same gather) plus :meth:`~PrioritizedReplayBuffer.update_priorities` (32 leaves
  and their paths in both trees), the work an update adds.

The goal set for chapter 4: prioritized at most 2x uniform at 1M, and growing as log N. A tree has ``log2 N``
levels (20 at 1M): a query and an update each take one numpy step per level for the whole batch, so their cost
grows with log N, while the uniform draw's does not grow at all; the gather of the 32 transitions, shared by
both, grows with N only through memory access (cache misses).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from update_cost import benchmark_args  # noqa: E402

from companion.buffers import PrioritizedReplayBuffer, ReplayBuffer  # noqa: E402
from companion.cost import time_call  # noqa: E402
from companion.records import save_benchmark  # noqa: E402

CAPACITIES = (10_000, 100_000, 1_000_000)
SHAPES = {"CartPole (4,) float32": ((4,), np.float32), "MinAtar (10, 10, 4) uint8": ((10, 10, 4), np.uint8)}
BATCH = 32


def filled(cls: type, capacity: int, shape: tuple[int, ...], dtype: type, rng: np.random.Generator):
    """A full buffer: its arrays written at once (adding 1M transitions one by one would take minutes), episodes
    of 200 steps, and for prioritized replay random priorities in its trees (as if each had been replayed)."""
    buffer = cls(capacity, shape, dtype, seed=0)
    buffer.obs[...] = rng.integers(0, 2, size=buffer.obs.shape).astype(dtype)
    buffer.actions[...] = rng.integers(0, 2, size=capacity)
    buffer.rewards[...] = 1.0
    buffer.ended[199::200] = buffer.terminated[199::200] = True
    buffer.last_obs = {int(i): buffer.obs[i] for i in np.flatnonzero(buffer.ended)}
    buffer.pos, buffer.full = 0, True
    if isinstance(buffer, PrioritizedReplayBuffer):
        priorities = rng.random(capacity) + 1e-3
        priorities[buffer.pos] = 0.0  # the write head is not a valid sample
        buffer.sum_tree.load(priorities)
        buffer.min_tree.load(np.where(priorities > 0, priorities, np.inf))
        buffer.max_priority = float(priorities.max())
    return buffer


def sample_and_update(buffer: PrioritizedReplayBuffer, errors: np.ndarray) -> None:
    """What prioritized replay does per update: a weighted sample, then the sampled slots' new priorities."""
    batch = buffer.sample(BATCH, beta=0.4)
    buffer.update_priorities(batch.indices, errors)


def main() -> None:
    args, device = benchmark_args(__doc__.splitlines()[0])
    rng = np.random.default_rng(0)
    rows = []
    for label, (shape, dtype) in SHAPES.items():
        for capacity in CAPACITIES:
            uniform = filled(ReplayBuffer, capacity, shape, dtype, rng)
            prioritized = filled(PrioritizedReplayBuffer, capacity, shape, dtype, rng)
            errors = rng.random(BATCH)
            us_uniform = 1e6 * time_call(lambda b=uniform: b.sample(BATCH), min_run_time=args.min_run_time)
            us_per = 1e6 * time_call(lambda b=prioritized, e=errors: sample_and_update(b, e),
                                     min_run_time=args.min_run_time)
            # where the time goes: the tree descent, the gather, and the priority update, each alone
            mass = (np.arange(BATCH) + 0.5) * (prioritized.sum_tree.total / BATCH)
            slots = prioritized.sum_tree.find(mass)
            b, m, i, e = prioritized, mass, slots, errors
            parts = {"us_find": lambda b=b, m=m: b.sum_tree.find(m), "us_gather": lambda b=b, i=i: b._gather(i),
                     "us_update_priorities": lambda b=b, i=i, e=e: b.update_priorities(i, e)}
            rows.append({"observation": label, "capacity": capacity, "batch": BATCH,
                         "tree_levels": prioritized.sum_tree.depth, "us_uniform_sample": round(us_uniform, 1),
                         "us_prioritized_sample_and_update": round(us_per, 1), "ratio": round(us_per / us_uniform, 2),
                         **{k: round(1e6 * time_call(f, min_run_time=args.min_run_time / 2), 1)
                            for k, f in parts.items()}})
            print(f"{label:26s} N={capacity:>9,}  uniform {us_uniform:7.1f} us  prioritized {us_per:7.1f} us  "
                  f"ratio {us_per / us_uniform:5.2f}  ({prioritized.sum_tree.depth} levels; find "
                  f"{rows[-1]['us_find']} us, gather {rows[-1]['us_gather']} us, update "
                  f"{rows[-1]['us_update_priorities']} us)")
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("per", rows, device, out))


if __name__ == "__main__":
    main()
