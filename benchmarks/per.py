"""What prioritized replay costs per batch, against uniform sampling from the same buffer (book chapter 4).

Run by hand on an otherwise idle machine:
``.venv/bin/python benchmarks/per.py [--threads 1] [--min-run-time 1] [--save]``; ``--save`` writes
``results/benchmarks/per.json`` with its provenance.

For each observation (CartPole's 4 float32, 16 bytes; a MinAtar frame, 4x10x10 uint8, 400 bytes) and
capacity (10k, 100k, 1M), a full buffer (episodes of 200 steps, priorities ``(|delta| + eps)^0.6`` with
``|delta|`` exponential, so the tree is uneven) is timed for:

- ``uniform``: ``ReplayBuffer.sample(32)`` on the same storage (the baseline);
- ``per``: ``sample(32, beta)`` then ``update_priorities`` of those 32: the work prioritized replay adds
  to each update, and the figure the goal is about (at most 2x uniform at 1M, growing as log N);
- its parts: ``find`` (32 stratified queries descending the sum tree), ``sample`` (draws, find, IS
  weights, gather), ``update`` (both trees' writes), and ``add`` (one transition, which also writes two
  slots' priorities), next to the uniform buffer's add.

Windows (8 steps of MinAtar frames, :class:`~companion.buffers.PrioritizedSequenceReplayBuffer`) are
timed the same way. Each figure is the best of 5 medians (``torch.utils.benchmark``, ``--min-run-time``
seconds each), in microseconds, so that a process beside the benchmark does not pass for a cost; the
buffers' numpy work runs on one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from update_cost import benchmark_args  # noqa: E402

from companion.buffers import (  # noqa: E402
    PrioritizedReplayBuffer,
    PrioritizedSequenceReplayBuffer,
    ReplayBuffer,
    SequenceReplayBuffer,
)
from companion.cost import time_call  # noqa: E402
from companion.records import save_benchmark  # noqa: E402

CAPACITIES = (10_000, 100_000, 1_000_000)
OBSERVATIONS = {"CartPole 4 float32": ((4,), np.float32), "MinAtar 4x10x10 uint8": ((4, 10, 10), np.uint8)}
BATCH, EPISODE, BETA = 32, 200, 0.5
REPEATS = 5


def full_buffer(capacity: int, obs_shape: tuple[int, ...], dtype: type, seq_len: int) -> PrioritizedReplayBuffer:
    """A full prioritized buffer whose storage and priorities are written directly (adding 10^6
    transitions one by one would take most of the benchmark's time and change nothing it measures)."""
    rng = np.random.default_rng(0)
    if seq_len:
        buffer = PrioritizedSequenceReplayBuffer(capacity, obs_shape, dtype, seq_len=seq_len, seed=0)
    else:
        buffer = PrioritizedReplayBuffer(capacity, obs_shape, dtype, seed=0)
    high = 255 if dtype == np.uint8 else 1
    for start in range(0, capacity, 100_000):  # in chunks: random float64 for 10^6 frames is 3 GB
        stop = min(start + 100_000, capacity)
        buffer.obs[start:stop] = rng.integers(0, high + 1, (stop - start, *obs_shape)).astype(dtype)
    buffer.rewards[:] = rng.random(capacity)
    buffer.actions[:] = rng.integers(0, 4, capacity)
    buffer.ended[EPISODE - 1::EPISODE] = True
    buffer.terminated[:] = buffer.ended
    buffer.last_obs = {int(k): buffer.obs[k].copy() for k in np.flatnonzero(buffer.ended)}
    buffer.pos, buffer.full = 0, True
    priorities = (rng.exponential(1.0, capacity) + buffer.eps) ** buffer.alpha
    span = max(seq_len, 1)
    priorities[(buffer.pos - np.arange(span)) % capacity] = 0.0  # the write head and the starts that reach it
    buffer.sum_tree.load(priorities)
    buffer.min_tree.load(np.where(priorities > 0, priorities, np.inf))
    buffer.max_priority = float(priorities.max())
    return buffer


def measure(buffer: PrioritizedReplayBuffer, uniform_cls: type, min_run_time: float) -> dict:
    rng = np.random.default_rng(1)
    td = rng.exponential(1.0, BATCH)
    indices = buffer.sample(BATCH, beta=BETA).indices

    def per() -> None:
        batch = buffer.sample(BATCH, beta=BETA)
        buffer.update_priorities(batch.indices, td)

    obs = buffer.obs[1].copy()
    uniform = uniform_cls(buffer.capacity, buffer.obs_shape, buffer.obs_dtype, seed=0,
                          **({"seq_len": buffer.seq_len} if uniform_cls is SequenceReplayBuffer else {}))
    uniform.pos, uniform.full = 0, True

    def us(fn) -> float:  # the best of REPEATS medians: a busy neighbour only ever adds time
        return round(1e6 * min(time_call(fn, min_run_time=min_run_time) for _ in range(REPEATS)), 1)

    row = {
        "uniform_us": us(lambda: uniform_cls.sample(buffer, BATCH)),  # the same storage, drawn uniformly
        "per_us": us(per),
    }
    mass = (np.arange(BATCH) + rng.random(BATCH)) * (buffer.sum_tree.total / BATCH)  # for the tree as it is now
    row |= {
        "find_us": us(lambda: buffer.sum_tree.find(mass)),
        "sample_us": us(lambda: buffer.sample(BATCH, beta=BETA)),
        "update_us": us(lambda: buffer.update_priorities(indices, td)),
        "add_us": us(lambda: buffer.add(obs, 0, 0.0, obs, False, False)),
        "uniform_add_us": us(lambda: uniform.add(obs, 0, 0.0, obs, False, False)),
        "tree_depth": buffer.sum_tree.depth,
    }
    row["ratio"] = round(row["per_us"] / row["uniform_us"], 2)
    return row


def main() -> None:
    args, device = benchmark_args(__doc__.splitlines()[0])
    cases = [(name, shape, dtype, 0) for name, (shape, dtype) in OBSERVATIONS.items()]
    cases.append(("MinAtar 4x10x10 uint8, windows of 8", (4, 10, 10), np.uint8, 8))
    rows = []
    print(f"batch {BATCH}; microseconds (best of {REPEATS} medians); per = sample(32, beta) + update_priorities")
    print(f"{'observation':38s} {'capacity':>9s} {'uniform':>8s} {'per':>8s} {'ratio':>6s} {'find':>7s} "
          f"{'sample':>7s} {'update':>7s} {'add':>6s} {'(unif.)':>7s} depth")
    for name, shape, dtype, seq_len in cases:
        for capacity in CAPACITIES:
            buffer = full_buffer(capacity, shape, dtype, seq_len)
            row = {"observation": name, "obs_shape": list(shape), "dtype": np.dtype(dtype).name,
                   "seq_len": seq_len or None, "capacity": capacity,
                   **measure(buffer, SequenceReplayBuffer if seq_len else ReplayBuffer, args.min_run_time)}
            rows.append(row)
            print(f"{name:38s} {capacity:>9,} {row['uniform_us']:8.1f} {row['per_us']:8.1f} {row['ratio']:5.1f}x "
                  f"{row['find_us']:7.1f} {row['sample_us']:7.1f} {row['update_us']:7.1f} {row['add_us']:6.1f} "
                  f"{row['uniform_add_us']:7.1f} {row['tree_depth']:5d}", flush=True)
            del buffer
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("per", rows, device, out, batch_size=BATCH, beta=BETA, repeats=REPEATS,
                                      goal="per_us <= 2 x uniform_us at capacity 1M, growing as log N"))


if __name__ == "__main__":
    main()
