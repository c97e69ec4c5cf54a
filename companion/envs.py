"""Environments: one place that registers every env family the course uses.

gymnasium 1.x loads no plugins by itself, so ALE ids (``ALE/Seaquest-v5``) resolve only after
``import ale_py``, MinAtar ids (``MinAtar/Breakout-v1``) only after ``minatar.gym.register_envs()``,
and popgym ids (``popgym-RepeatPreviousEasy-v0``) only after ``import popgym``. :func:`register_envs`
does all three once, and :func:`make_env` calls it, so a reader never meets
"Namespace ALE not found".

Chapter 2 adds the preprocessing (Atari frames, MinAtar channels-first tensors) and the
partial-observability wrappers on top of :func:`make_env`.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from typing import Any

import gymnasium as gym

_REGISTERED = False

#: The env families and the module each needs; a family whose package is missing is skipped.
ENV_FAMILIES: dict[str, str] = {"ALE": "ale_py", "MinAtar": "minatar", "popgym": "popgym"}


def register_envs() -> None:
    """Register the ALE, MinAtar and popgym ids with gymnasium (idempotent, cheap after the first call)."""
    global _REGISTERED
    if _REGISTERED:
        return
    for module_name in ENV_FAMILIES.values():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # an optional family; make_env reports it by name if it is asked for
            continue
        if module_name == "ale_py":
            gym.register_envs(module)
            # The ALE prints a banner to stderr when its first game starts; keep only its errors.
            module.ALEInterface.setLoggerMode(module.LoggerMode.Error)
        elif module_name == "minatar":
            from minatar.gym import register_envs as register_minatar

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                register_minatar()
    _REGISTERED = True


def _unknown_id_message(env_id: str) -> str:
    family = next((f for f in ENV_FAMILIES if env_id.startswith(f)), None)
    if family is not None:
        try:
            importlib.import_module(ENV_FAMILIES[family])
        except ImportError:
            return f"unknown env id {env_id!r}: the {family} family needs the package {ENV_FAMILIES[family]!r}"
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown env id {env_id!r}{hint}"


def make_env(env_id: str, *, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """Create a registered environment, registering every family first.

    Args:
        env_id: a gymnasium id such as ``CartPole-v1``, ``ALE/Seaquest-v5``, ``MinAtar/Breakout-v1``
            or ``popgym-RepeatPreviousEasy-v0`` (popgym ids carry a difficulty).
        seed: if given, the env is reset once with this seed and its action space is seeded.
        **kwargs: passed to ``gymnasium.make``.

    Raises:
        ValueError: for an unknown id, with the closest known ids as a hint.
    """
    register_envs()
    if env_id not in gym.registry:
        raise ValueError(_unknown_id_message(env_id))
    env = gym.make(env_id, **kwargs)
    if seed is not None:
        env.action_space.seed(seed)
        env.reset(seed=seed)
    return env
