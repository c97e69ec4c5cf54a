"""Measuring what a computation costs: wall time, peak memory and the memory it allocates (chapters 1 and 5).

Both functions take a zero-argument callable, so anything can be measured the same way:
``time_call(lambda: mha(x, x, x))``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import _pytree, benchmark
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["allocated_bytes", "peak_memory_bytes", "time_call"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def time_call(fn: Callable[[], object], *, min_run_time: float = 0.2, warmup: int = 2) -> float:
    """Median seconds per call of ``fn``, by ``torch.utils.benchmark`` (which syncs CUDA for us)."""
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _status_bytes(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M)
    if match is None:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1)) * 1024


def peak_memory_bytes(fn: Callable[[], object]) -> int | None:
    """Extra resident memory (bytes) at the peak of one call of ``fn``, on the CPU under Linux.

    It resets the process's high-water mark (``echo 5 > /proc/self/clear_refs``), runs ``fn``, and
    reads how far the peak resident set rose above where it started. Large tensors are allocated
    with ``mmap`` and handed back when freed, so the figure follows tensor allocations; it has page
    granularity and includes anything else the process touched meanwhile. Run ``fn`` once before,
    so that one-time allocations are not counted.

    Returns ``None`` where this cannot be measured (not Linux, or ``/proc`` is not writable).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        _CLEAR_REFS.write_text("5")
        start = _status_bytes("VmRSS")
    except OSError:
        return None
    fn()
    return max(0, _status_bytes("VmHWM") - start)


class _NewStorages(TorchDispatchMode):
    """Adds up the bytes of the storage of every result that is not one of its op's inputs' (a view or an
    in-place result shares its input's storage and adds nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    @staticmethod
    def _storages(tree: object) -> dict[int, int]:
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in _pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = self._storages((args, kwargs))
        out = func(*args, **(kwargs or {}))
        self.total += sum(n for ptr, n in self._storages(out).items() if ptr not in inputs)
        return out


def allocated_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the new tensors that one call of ``fn`` creates, on any device: the sum over its operations of
    each new result's storage (a view or an in-place result adds nothing). It counts what the computation
    materialises, not what the allocator holds, so it is the same on every machine; the peak of live memory is
    at most this sum (and at least the largest single tensor)."""
    with _NewStorages() as counter:
        fn()
    return counter.total
