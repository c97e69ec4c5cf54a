"""What a hierarchical read of an episodic memory costs against a flat one (book chapter 5).

Run by hand on an otherwise idle machine:
``.venv/bin/python benchmarks/hierarchical.py [--threads 1] [--save]``; ``--save`` writes
``results/benchmarks/hierarchical.json`` with its provenance.

The memories are the agents' (``ppo-memory``, ``ppo-hmemory``): width 64, 4 heads, one env acting. A memory holds
``L`` past steps. The flat read (:class:`~companion.attention.EpisodicMemory`) scores all ``L`` slots; the
hierarchical read (:class:`~companion.attention.HierarchicalMemory`) scores ``L / c`` chunk summaries, keeps
``k = 2`` chunks and attends over their ``k c`` slots. Three tables:

- ``per_step``: one read from a full memory, for ``L = 64 .. 16,384`` (``c`` the power of two nearest
  ``sqrt(L / k)``, where ``L / c + k c`` is smallest): milliseconds and the bytes the read allocates
  (:func:`~companion.cost.allocated_bytes`: the sum of its new tensors, an upper bound on its peak; the rise of
  the process's peak resident memory stayed 0 at every ``L``, the allocator reusing what it holds);
- ``chunk_sweep``: one read at ``L = 4,096`` for ``c = 4 .. 1,024``;
- ``episode``: the reads of a whole episode of ``L`` steps from a memory that grows with it (step ``t`` reads a
  memory sized to its ``t`` past steps: flat capacity ``t``; hierarchical ``ceil(t / c)`` chunks, ``c`` chosen for
  ``L``), timed at 512 evenly spaced steps and scaled by ``L / 512``. The agents' caches have a fixed capacity
  ``M`` instead: they pay a full memory's read (the ``per_step`` figure at ``L = M``) at every step.

- ``agents``: what the read costs inside a training run: env steps per second of ``ppo-memory`` and
  ``ppo-hmemory`` (``M = 1024``, ``c = 16``, ``k = 2``) on ``CueRecall-D{64,256}-v0`` with chapter 5's sweep
  settings, 120 episodes each, one after the other in this process (no evaluation), after a warm-up run.

Log-log slopes are fitted over ``L >= 1,024``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from update_cost import benchmark_args  # noqa: E402

from companion.attention import ChunkCache, EpisodicMemory, HierarchicalMemory, MemoryCache  # noqa: E402
from companion.cost import allocated_bytes, time_call  # noqa: E402
from companion.records import RunDir, save_benchmark  # noqa: E402
from companion.train import build_config, train  # noqa: E402

DIM, HEADS, TOP_K = 64, 4, 2
LENGTHS = tuple(2 ** p for p in range(6, 15))  # 64 .. 16,384
SWEEP_L, SWEEP_C = 4096, tuple(2 ** p for p in range(2, 11))  # c = 4 .. 1,024
EPISODE_SAMPLES = 512


def best_chunk(length: int, k: int = TOP_K) -> int:
    """A power of two next to ``sqrt(L / k)``, where ``L / c + k c`` is smallest (of the two nearest, the one that
    ``round`` picks on a log scale)."""
    return min(2 ** round(math.log2(math.sqrt(length / k))), length)


def flat_memory(length: int, filled: int, n: int = 1) -> tuple[EpisodicMemory, MemoryCache]:
    """A memory of ``length`` slots holding the last ``filled``, for ``n`` envs."""
    memory = EpisodicMemory(DIM, HEADS, length)
    keys, values = torch.randn(n, HEADS, length, DIM // HEADS), torch.randn(n, HEADS, length, DIM // HEADS)
    valid = (torch.arange(length)[None] >= length - filled).expand(n, -1)  # the newest `filled` slots
    return memory, MemoryCache(keys, values, valid)


def hierarchical_memory(length: int, chunk: int, filled: int, n: int = 1) -> tuple[HierarchicalMemory, ChunkCache]:
    """A memory of ``length`` slots (a multiple of ``chunk``) holding steps ``0 .. filled - 1``, for ``n`` envs."""
    memory = HierarchicalMemory(DIM, HEADS, length, chunk, TOP_K)
    chunks = length // chunk
    shape = (n, HEADS, chunks, chunk, DIM // HEADS)
    valid = (torch.arange(length) < filled).view(1, chunks, chunk).expand(n, -1, -1)  # steps 0 .. filled - 1
    keys = torch.randn(shape) * valid[:, None, :, :, None]
    return memory, ChunkCache(keys, torch.randn(shape), valid, keys.sum(3), torch.full((n,), filled))


def read_cost(make: callable, min_run_time: float) -> tuple[float, int]:
    """Milliseconds of one read for one env, and the bytes it allocates."""
    memory, cache = make(1)
    query = torch.randn(1, DIM)
    with torch.no_grad():
        seconds = time_call(lambda: memory.read_step(query, cache), min_run_time=min_run_time)
        allocated = allocated_bytes(lambda: memory.read_step(query, cache))
    return 1e3 * seconds, allocated


def episode_ms(make: callable, length: int) -> float:
    """Milliseconds for the reads of a whole episode of ``length`` steps, from reads at sampled steps."""
    query = torch.randn(1, DIM)
    steps = np.linspace(1, length, min(EPISODE_SAMPLES, length)).round().astype(int)
    total = 0.0
    with torch.no_grad():
        for t in steps:
            memory, cache = make(int(t))
            memory.read_step(query, cache)  # warm
            start = time.perf_counter()
            memory.read_step(query, cache)
            total += time.perf_counter() - start
    return 1e3 * total * length / len(steps)


def agent_steps_per_second(algo: str, delay: int, episodes: int = 120) -> float:
    """Env steps per second of a short training run with chapter 5's sweep settings (no evaluation)."""
    length = delay + 2
    run, config = build_config(algo, f"CueRecall-D{delay}-v0", seed=0, total_steps=episodes * length,
                               overrides={"n_steps": length, "batch_size": 8 * length, "n_epochs": 4,
                                          "memory": 1024, "eval_every": 10 ** 9, "eval_episodes": 1})
    with tempfile.TemporaryDirectory() as folder:
        train(run, config, Path(folder) / "run", show_progress=False)
        return float(RunDir(Path(folder) / "run").meta()["steps_per_second"])


def slope(rows: list[dict], x: str, y: str) -> float:
    fit = [(math.log(r[x]), math.log(r[y])) for r in rows if r[x] >= 1024]
    return float(np.polyfit(*zip(*fit, strict=True), 1)[0])


def main() -> None:
    args, _ = benchmark_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    per_step = []
    for length in LENGTHS:
        c = best_chunk(length)
        flat_ms, flat_alloc = read_cost(lambda n, L=length: flat_memory(L, L, n), args.min_run_time)
        hier_ms, hier_alloc = read_cost(lambda n, L=length, c=c: hierarchical_memory(L, c, L, n), args.min_run_time)
        per_step.append({"L": length, "c": c, "k": TOP_K, "flat_ms": round(flat_ms, 4), "hier_ms": round(hier_ms, 4),
                         "flat_alloc_bytes": flat_alloc, "hier_alloc_bytes": hier_alloc,
                         "flat_scored": length, "hier_scored": length // c + TOP_K * c})
        print(f"L={length:6d} c={c:4d}  flat {flat_ms:7.3f} ms  hierarchical {hier_ms:7.3f} ms  "
              f"allocates {flat_alloc:,} / {hier_alloc:,} bytes")
    chunk_sweep = []
    for c in SWEEP_C:
        ms, allocated = read_cost(lambda n, c=c: hierarchical_memory(SWEEP_L, c, SWEEP_L, n), args.min_run_time)
        chunk_sweep.append({"L": SWEEP_L, "c": c, "k": TOP_K, "hier_ms": round(ms, 4), "hier_alloc_bytes": allocated,
                            "hier_scored": SWEEP_L // c + TOP_K * c})
        print(f"L={SWEEP_L} c={c:5d}  hierarchical {ms:7.3f} ms")
    episode = []
    for length in LENGTHS:
        c = best_chunk(length)
        flat = episode_ms(lambda t: flat_memory(t, t), length)  # memories that grow with the episode
        hier = episode_ms(lambda t, c=c: hierarchical_memory(-(-t // c) * c, c, t), length)
        episode.append({"L": length, "c": c, "k": TOP_K, "flat_ms": round(flat, 3), "hier_ms": round(hier, 3)})
        print(f"episode of {length:6d} steps: flat {flat:9.1f} ms  hierarchical {hier:9.1f} ms")
    agents = []
    agent_steps_per_second("ppo-hmemory", 16, episodes=16)  # warm-up: imports and first allocations
    for delay in (64, 256):
        row = {"env_id": f"CueRecall-D{delay}-v0", "memory": 1024, "c": 16, "k": TOP_K,
               "flat_steps_per_s": agent_steps_per_second("ppo-memory", delay),
               "hier_steps_per_s": agent_steps_per_second("ppo-hmemory", delay)}
        agents.append(row)
        print(f"D = {delay}: ppo-memory {row['flat_steps_per_s']:.0f} steps/s, "
              f"ppo-hmemory {row['hier_steps_per_s']:.0f} steps/s")
    slopes = {"per_step_flat": slope(per_step, "L", "flat_ms"), "per_step_hier": slope(per_step, "L", "hier_ms"),
              "episode_flat": slope(episode, "L", "flat_ms"), "episode_hier": slope(episode, "L", "hier_ms")}
    cheaper = [r["L"] for r in per_step if r["hier_ms"] < r["flat_ms"]]
    print("log-log slopes (L >= 1024):", {k: round(v, 2) for k, v in slopes.items()})
    print("hierarchical cheaper per step from L =", cheaper[0] if cheaper else "never")
    if args.save:
        out = Path(__file__).resolve().parents[1] / "results" / "benchmarks"
        print("saved", save_benchmark("hierarchical", per_step, "cpu", out, chunk_sweep=chunk_sweep, episode=episode,
                                      agents=agents, slopes=slopes, dim=DIM, heads=HEADS, top_k=TOP_K))


if __name__ == "__main__":
    main()
