"""Small utilities every chapter needs: seeding, device choice, progress bars."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from typing import Any, Final, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

DEVICE_ENV_VAR: Final = "COMPANION_DEVICE"

T = TypeVar("T")


def seed_everything(seed: int, env: Any | None = None, *, deterministic_torch: bool = False) -> np.random.Generator:
    """Seed Python's ``random``, NumPy's global generator, torch (CPU and CUDA) and, if given, an env.

    Args:
        seed: a non-negative integer.
        env: a gymnasium env or vector env. Its action space is seeded, and it is reset with
            ``seed`` so that its own ``np_random`` starts from a known state.
        deterministic_torch: also ask torch for deterministic kernels (slower; only matters on GPU).

    Returns:
        A fresh ``numpy.random.Generator`` seeded with ``seed``, for code that prefers an explicit
        generator over the global one.

    The same seed on the same machine and library versions gives the same run on CPU. GPU kernels
    may still differ run to run unless ``deterministic_torch`` is set.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic_torch:
        torch.use_deterministic_algorithms(True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if env is not None:
        env.action_space.seed(seed)
        env.reset(seed=seed)
    return np.random.default_rng(seed)


def episode_seed(seed: int, episode: int, stream: int = 0) -> int:
    """A seed for one episode, independent across ``(seed, stream, episode)``.

    The training loops reset every episode with such a seed, so an episode is fixed by the run's seed
    and its index: that is what lets an interrupted run resume to the same records. Streams keep
    apart the episodes of training (0), evaluation (1), and the sub-envs of a vector env (10 + index).
    """
    return int(np.random.SeedSequence([seed, stream, episode]).generate_state(1)[0])


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Choose where tensors live.

    Order: the ``device`` argument, then ``$COMPANION_DEVICE``, then CUDA, then Apple's MPS, then CPU.

    Raises:
        ValueError: if the requested device is not a valid torch device or is not available here.
    """
    requested = device if device is not None else (os.environ.get(DEVICE_ENV_VAR, "").strip() or None)
    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{requested!r} is not a torch device (try 'cpu', 'cuda', 'cuda:1' or 'mps')") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was requested, but CUDA is not available on this machine")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {requested!r} was requested, but MPS is not available on this machine")
    return chosen


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str | None = None,
             disable: bool | None = None, **kwargs: Any) -> Iterator[T] | Any:
    """A progress bar that draws as a widget in Jupyter and as text in a terminal.

    A thin wrapper over ``tqdm.auto.tqdm`` with the project's defaults: it updates at most a few
    times a second and leaves no bar behind when output is not a terminal or a notebook and
    ``$TQDM_DISABLE`` is set (the book build sets it, so pages hold results, not bars).

    Use it as an iterable wrapper, ``for x in progress(xs)``, or by hand,
    ``bar = progress(total=n); bar.update(k); bar.set_postfix(ret=...); bar.close()``.
    """
    kwargs.setdefault("mininterval", 0.25)
    kwargs.setdefault("dynamic_ncols", True)
    if os.environ.get("TQDM_DISABLE", "").strip().lower() in {"1", "true", "yes"}:
        disable = True  # the environment wins: the book build turns every bar off
    return tqdm(iterable, total=total, desc=desc, disable=bool(disable), **kwargs)
