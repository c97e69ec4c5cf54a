"""Speed of companion.attention.MultiHeadAttention against torch.nn.MultiheadAttention.

Run by hand (not part of the tests):

    .venv/bin/python benchmarks/attention.py [--threads N] [--device cpu|cuda] [--min-run-time 0.5]

For each (B, L, E, H) it times self-attention in two modes:

- inference: ``torch.no_grad()``, eval mode;
- training: forward + backward in train mode.

and prints the time ratio ours / torch for

- the fast path (``need_weights=False``) against ``nn.MultiheadAttention(need_weights=False)``;
- the manual path (``need_weights=True``) against ``nn.MultiheadAttention(need_weights=True,
  average_attn_weights=False)``, which also materialises per-head weights.

A ratio below 1 means ours is faster. Target for the fast path: <= 1.1.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.attention import MultiHeadAttention  # noqa: E402

SHAPES = [  # (B, L, E, H)
    (32, 16, 64, 4),  # SA-DQN over a short history
    (64, 49, 256, 8),  # DARQN-sized: 7x7 locations
    (8, 128, 128, 4),
    (4, 512, 256, 8),
    (1, 1024, 512, 8),
]


def _time(fn, min_run_time: float) -> float:
    for _ in range(3):  # warm-up: first calls pay for allocations and thread start-up
        fn()
    return benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def measure(shape, device: str, min_run_time: float) -> dict[str, float]:
    B, L, E, H = shape
    reference = nn.MultiheadAttention(E, H, batch_first=True).to(device)
    ours = MultiHeadAttention.from_torch(reference)
    x = torch.randn(B, L, E, device=device)
    ratios = {}
    for mode in ("inference", "training"):
        reference.train(mode == "training")
        ours.train(mode == "training")
        for path, theirs_kwargs, ours_kwargs in (
            ("fast", dict(need_weights=False), dict(need_weights=False)),
            ("manual", dict(need_weights=True, average_attn_weights=False), dict(need_weights=True)),
        ):
            def run(module, kwargs, grad=(mode == "training")):
                def step():
                    if grad:
                        module(x, x, x, **kwargs)[0].sum().backward()
                    else:
                        with torch.no_grad():
                            module(x, x, x, **kwargs)
                return step

            t_theirs = _time(run(reference, theirs_kwargs), min_run_time)
            t_ours = _time(run(ours, ours_kwargs), min_run_time)
            ratios[f"{mode}/{path}"] = t_ours / t_theirs
            ratios[f"{mode}/{path}/torch_ms"] = 1e3 * t_theirs
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    cols = ["inference/fast", "inference/manual", "training/fast", "training/manual"]
    print(f"{'B':>4} {'L':>5} {'E':>4} {'H':>2} | " + " | ".join(f"{c:>16}" for c in cols)
          + " | torch ms (inf/fast, train/fast)")
    worst_fast = 0.0
    for shape in SHAPES:
        r = measure(shape, args.device, args.min_run_time)
        worst_fast = max(worst_fast, r["inference/fast"], r["training/fast"])
        print(f"{shape[0]:>4} {shape[1]:>5} {shape[2]:>4} {shape[3]:>2} | "
              + " | ".join(f"{r[c]:>15.2f}x" for c in cols)
              + f" | {r['inference/fast/torch_ms']:.3f}, {r['training/fast/torch_ms']:.3f}")
    print(f"worst fast-path ratio: {worst_fast:.2f}x (target <= 1.1x)")


if __name__ == "__main__":
    main()
