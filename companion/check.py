"""Check an installation: library versions, the device, and one step of each env family.

Run it as ``python -m companion check`` or from ``notebooks/00_setup.ipynb``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch

from companion.budget import get_budget
from companion.envs import make_env
from companion.utils import get_device

#: One env of each family the course uses.
CHECK_ENVS: tuple[str, ...] = ("ALE/Seaquest-v5", "MinAtar/Breakout-v1", "popgym-RepeatPreviousEasy-v0")


@dataclass(frozen=True)
class EnvCheck:
    """What one reset and one step of an env gave."""

    env_id: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    n_actions: int
    reward: float
    ok: bool
    error: str = ""
    step_ms: float = float("nan")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries the course depends on, plus the device and budget."""
    import companion

    return {
        "python": platform.python_version(),
        "companion": companion.__version__,
        "torch": torch.__version__,
        "device": str(get_device()),
        "gymnasium": _version("gymnasium"),
        "ale-py": _version("ale-py"),
        "minatar": _version("MinAtar"),
        "popgym": _version("popgym"),
        "numpy": np.__version__,
        "budget": get_budget(),
    }


def check_env(env_id: str, seed: int = 0) -> EnvCheck:
    """Reset ``env_id`` with ``seed``, take action 0 once, and report the observation it gives."""
    try:
        env = make_env(env_id, preprocess=False)
        obs, _ = env.reset(seed=seed)
        start = time.perf_counter()
        obs, reward, _terminated, _truncated, _ = env.step(0)
        step_ms = 1e3 * (time.perf_counter() - start)
        obs = np.asarray(obs)
        n_actions = int(getattr(env.action_space, "n", -1))
        env.close()
        return EnvCheck(env_id, tuple(obs.shape), str(obs.dtype), n_actions, float(reward), True, step_ms=step_ms)
    except Exception as err:  # the check reports every failure instead of stopping at the first
        return EnvCheck(env_id, (), "", -1, float("nan"), False, error=f"{type(err).__name__}: {err}")


def check_envs(env_ids: tuple[str, ...] = CHECK_ENVS) -> list[EnvCheck]:
    """Run :func:`check_env` on each id."""
    return [check_env(env_id) for env_id in env_ids]


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Format rows of strings as a plain-text table with aligned columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def env_table(checks: list[EnvCheck]) -> str:
    """The env checks as a table (deterministic: no timings)."""
    rows = [
        [c.env_id, "ok" if c.ok else "FAILED", str(c.obs_shape), c.obs_dtype, str(c.n_actions), f"{c.reward:g}"]
        for c in checks
    ]
    text = format_table(rows, ["env", "status", "obs shape", "dtype", "actions", "reward"])
    errors = [f"{c.env_id}: {c.error}" for c in checks if not c.ok]
    return "\n".join([text, *errors])


def main() -> int:
    """Print the versions and the env table; exit status 1 if any env failed."""
    print(format_table([[k, v] for k, v in versions().items()], ["component", "version"]))
    print()
    checks = check_envs()
    print(env_table(checks))
    return 0 if all(c.ok for c in checks) else 1
