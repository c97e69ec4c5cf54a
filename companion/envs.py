"""Environments: registration, the course's preprocessing, and partial-observability wrappers.

gymnasium 1.x loads no plugins by itself, so ALE ids (``ALE/Seaquest-v5``) resolve only after
``import ale_py``, MinAtar ids (``MinAtar/Breakout-v1``) only after ``minatar.gym.register_envs()``,
and popgym ids (``popgym-RepeatPreviousEasy-v0``) only after ``import popgym``. :func:`register_envs`
does all three once, and :func:`make_env` calls it, so a reader never meets
"Namespace ALE not found". The course's own memory task (``CueRecall-v0``, ``CueRecall-D64-v0``, ...;
:mod:`companion.memory_tasks`) is registered when this module is imported; it is in the "gym" family.

:func:`make_env` builds the pipelines of chapter 2:

- **ALE** (Mnih et al. 2015; Machado et al. 2018): a ``frameskip=1`` base, then gymnasium's
  ``AtariPreprocessing`` (up to 30 no-op starts, action repeat 4 with max-pooling of the last two
  frames, 84x84 grey) giving ``(1, 84, 84)`` uint8, or ``(k, 84, 84)`` with ``frame_stack=k``
  (DQN uses 4; recurrent agents see single frames). Sticky actions (p = 0.25) stay on, as in v5,
  unless the run's agent config says otherwise (``sticky_actions``: DARQN's ``atari_paper`` preset uses the
  deterministic ALE of the 2015 papers, p = 0).
- **MinAtar** (Young & Tian 2019): the ``(10, 10, C)`` boolean grid becomes channels-first
  ``(C, 10, 10)`` uint8 (agents turn it into float), with a time limit.
- **popgym** (Morad et al. 2023): non-Box observations are one-hot encoded into a flat vector.
- Anything else (classic control): as registered.

Then, optionally, the partial-observability wrappers (:class:`MaskObservation`,
:class:`FlickerObservation`), the previous action and reward as inputs (:class:`PreviousActionReward`),
then frame stacking, which for images stacks along channels.

:class:`EpisodeReplay` lets a vector env's sub-env be put back mid-episode (its episode's seed, then its
actions so far): the on-policy loop of chapter 3 resumes from a checkpoint that way.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import (
    AtariPreprocessing,
    FlattenObservation,
    FrameStackObservation,
    ReshapeObservation,
    TimeLimit,
)

from companion.memory_tasks import register_memory_tasks

__all__ = [
    "EnvMismatchError",
    "EpisodeReplay",
    "FlickerObservation",
    "MaskObservation",
    "MinAtarObservation",
    "PreviousActionReward",
    "check_discrete_actions",
    "env_family",
    "make_env",
    "make_vec_env",
    "register_envs",
]

_REGISTERED = False

#: The env families and the module each needs; a family whose package is missing is skipped.
ENV_FAMILIES: dict[str, str] = {"ALE": "ale_py", "MinAtar": "minatar", "popgym": "popgym"}

#: MinAtar registers no time limit; episodes are cut here (Young & Tian cap evaluation at this too).
MINATAR_MAX_EPISODE_STEPS = 10_000


class EnvMismatchError(ValueError):
    """An environment that does not fit the agent asked for; the message is one line."""


def register_envs() -> None:
    """Register the ALE, MinAtar and popgym ids, and the course's own, with gymnasium (idempotent, cheap after the
    first call)."""
    global _REGISTERED
    if _REGISTERED:
        return
    register_memory_tasks()  # the course's own ids (also done on import; idempotent)
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
            # minatar.gym logs a warning when seaborn (only used for rendering) is missing, and its -v0 ids
            # warn that they are out of date: silence both, then restore the logging level the user had.
            previous = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                from minatar.gym import register_envs as register_minatar

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    register_minatar()
            finally:
                logging.disable(previous)
    _REGISTERED = True


def env_family(env_id: str) -> str:
    """``"ALE"``, ``"MinAtar"``, ``"popgym"`` or ``"gym"`` (everything else)."""
    return next((family for family in ENV_FAMILIES if env_id.startswith(family)), "gym")


def _unknown_id_message(env_id: str) -> str:
    family = env_family(env_id)
    if family != "gym":
        try:
            importlib.import_module(ENV_FAMILIES[family])
        except ImportError:
            return f"unknown env id {env_id!r}: the {family} family needs the package {ENV_FAMILIES[family]!r}"
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown env id {env_id!r}{hint}"


# --------------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------------
class MinAtarObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MinAtar's ``(10, 10, C)`` boolean grid as a channels-first ``(C, 10, 10)`` uint8 array of 0/1."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        height, width, channels = env.observation_space.shape
        self.observation_space = spaces.Box(0, 1, (channels, height, width), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(observation, -1, 0), dtype=np.uint8)


class MaskObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Hide some dimensions of a vector observation: they are removed, not zeroed.

    ``MaskObservation(gym.make("CartPole-v1"), hidden=[1, 3])`` leaves cart position and pole angle
    and hides both velocities: a single observation no longer tells where the pole is going.
    """

    def __init__(self, env: gym.Env, hidden: Sequence[int]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, hidden=tuple(int(i) for i in hidden))
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise EnvMismatchError(f"MaskObservation needs a 1-D Box observation; got {space}")
        size = space.shape[0]
        hidden_set = {int(i) % size for i in hidden}
        if not hidden_set or len(hidden_set) >= size or any(not -size <= int(i) < size for i in hidden):
            raise ValueError(f"hidden must name some but not all of the {size} dimensions; got {list(hidden)}")
        self.visible = np.array([i for i in range(size) if i not in hidden_set])
        self.observation_space = spaces.Box(space.low[self.visible], space.high[self.visible], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.visible]


class FlickerObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """With probability ``p``, replace the whole observation by zeros (Hausknecht & Stone 2015, "flickering").

    The blanking has its own random generator, seeded from the seed passed to ``reset``, so a seeded
    episode flickers the same way every time.
    """

    def __init__(self, env: gym.Env, p: float = 0.5) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, p=p)
        gym.ObservationWrapper.__init__(self, env)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"flicker probability must lie in [0, 1), got {p}")
        self.p = p
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, 0xF11C])  # independent of the env's own stream
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.zeros_like(observation) if self._rng.random() < self.p else observation


class PreviousActionReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Append the previous action (one-hot) and, optionally, the previous reward to a vector observation.

    ``o_t`` becomes ``[o_t, onehot(a_{t-1}), r_{t-1}]``, with zeros at the first step of an episode. A
    memory agent then sees what it did, not only what it saw: in CartPole the cart's velocity changes by
    the last push, so the previous action carries information that the positions alone do not. (POPGym's
    baselines feed the previous action too; Morad et al. 2023.)
    """

    def __init__(self, env: gym.Env, reward: bool = True) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, reward=reward)
        gym.Wrapper.__init__(self, env)
        space, actions = env.observation_space, env.action_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise EnvMismatchError(f"PreviousActionReward needs a 1-D Box observation; got {space}")
        if not isinstance(actions, spaces.Discrete):
            raise EnvMismatchError(f"PreviousActionReward needs discrete actions; got {actions}")
        self.n_actions, self.with_reward = int(actions.n), reward
        extra = self.n_actions + int(reward)
        low = np.concatenate([np.asarray(space.low, np.float32), np.zeros(self.n_actions, np.float32),
                              np.full(int(reward), -np.inf, np.float32)])
        high = np.concatenate([np.asarray(space.high, np.float32), np.ones(self.n_actions, np.float32),
                               np.full(int(reward), np.inf, np.float32)])
        self.observation_space = spaces.Box(low, high, (space.shape[0] + extra,), np.float32)

    def _with(self, obs: np.ndarray, action: int | None, reward: float) -> np.ndarray:
        extra = np.zeros(self.n_actions + int(self.with_reward), np.float32)
        if action is not None:
            extra[int(action)] = 1.0
            if self.with_reward:
                extra[-1] = reward
        return np.concatenate([np.asarray(obs, np.float32), extra])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._with(obs, None, 0.0), info

    def step(self, action: int):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._with(obs, action, float(reward)), reward, terminated, truncated, info


class EpisodeReplay(gym.Wrapper):
    """A sub-env of a vector env that can be put back mid-episode: ``reset(seed=s, options={"replay": {i:
    actions}})`` resets with ``s`` and then takes ``actions``, returning the observation after the last.

    The options of a vector env's ``reset`` go to every sub-env, so each one knows its ``index`` and takes
    its own list. Envs are deterministic given the reset seed and the actions, so this restores the exact
    state of an episode that a checkpoint interrupted, for any env, without pickling it.
    """

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        replay = (options or {}).get("replay", {}).get(self.index, [])
        obs, info = self.env.reset(seed=seed)
        for t, action in enumerate(replay):
            obs, _, terminated, truncated, info = self.env.step(action)
            if (terminated or truncated) and t < len(replay) - 1:
                raise RuntimeError(f"sub-env {self.index}: the replayed episode ended after {t + 1} of "
                                   f"{len(replay)} actions; the env is not deterministic given its seed")
        return obs, info


def _stack(env: gym.Env, k: int) -> gym.Env:
    """Stack the last ``k`` observations: along channels for images, end to end for vectors."""
    shape = env.observation_space.shape
    env = FrameStackObservation(env, k)
    if len(shape) == 1:
        return ReshapeObservation(env, (k * shape[0],))
    if len(shape) == 3:
        return ReshapeObservation(env, (k * shape[0], *shape[1:]))
    return env  # (k, H, W) for single-channel images is already channels-first


# --------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------
def make_env(env_id: str, *, seed: int | None = None, frame_stack: int | None = None,
             hide: Sequence[int] | None = None, flicker: float = 0.0, prev_action: bool = False,
             prev_reward: bool = False, max_episode_steps: int | None = None, preprocess: bool = True,
             **kwargs: Any) -> gym.Env:
    """Create an environment with the course's preprocessing.

    Args:
        env_id: a gymnasium id: ``CartPole-v1``, ``ALE/Seaquest-v5``, ``MinAtar/Breakout-v1``,
            ``popgym-RepeatPreviousEasy-v0`` (popgym ids carry a difficulty), ...
        seed: if given, the env is reset once with this seed and its action space is seeded.
        frame_stack: stack the last ``k`` observations (along channels for images).
        hide: indices of vector-observation dimensions to hide (:class:`MaskObservation`).
        flicker: probability of blanking each observation (:class:`FlickerObservation`).
        prev_action, prev_reward: append the previous action (one-hot), and the previous reward, to a
            vector observation (:class:`PreviousActionReward`); ``prev_reward`` implies ``prev_action``.
        max_episode_steps: a time limit (MinAtar defaults to 10,000).
        preprocess: ``False`` skips the family's preprocessing: the env as registered (raw 210x160
            RGB Atari frames, MinAtar's channels-last booleans); the options above still apply.
        **kwargs: passed to ``gymnasium.make``.

    Returns:
        The env. ALE and MinAtar observations are channels-first uint8 arrays.

    Raises:
        ValueError: for an unknown id, with the closest known ids as a hint.
    """
    register_envs()
    if env_id not in gym.registry:
        raise ValueError(_unknown_id_message(env_id))
    family = env_family(env_id)
    if not preprocess:
        env = gym.make(env_id, **kwargs)
    elif family == "ALE":
        env = gym.make(env_id, frameskip=1, **kwargs)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
        if (frame_stack or 1) <= 1:  # single frames keep a channel axis: (1, 84, 84)
            env = ReshapeObservation(env, (1, 84, 84))
    elif family == "MinAtar":
        with warnings.catch_warnings():  # -v0 ids warn that they are out of date
            warnings.simplefilter("ignore")
            env = gym.make(env_id, **kwargs)
        env = MinAtarObservation(env)
        max_episode_steps = max_episode_steps or MINATAR_MAX_EPISODE_STEPS
    else:
        env = gym.make(env_id, **kwargs)
        if not isinstance(env.observation_space, spaces.Box):
            env = FlattenObservation(env)  # popgym's Discrete / MultiDiscrete observations, one-hot
    if max_episode_steps:
        env = TimeLimit(env, max_episode_steps)
    if hide:
        env = MaskObservation(env, hide)
    if flicker:
        env = FlickerObservation(env, flicker)
    if prev_action or prev_reward:
        env = PreviousActionReward(env, reward=prev_reward)
    if frame_stack and frame_stack > 1:
        env = _stack(env, frame_stack)
    if seed is not None:
        env.action_space.seed(seed)
        env.reset(seed=seed)
    return env


def make_vec_env(env_id: str, num_envs: int, *, seed: int | None = None, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of :func:`make_env` in a ``SyncVectorEnv``, reset with seeds ``seed, seed+1, ...``.

    It uses same-step autoreset: when a sub-env's episode ends, the step returns the next episode's
    first observation and puts the last one in ``info["final_obs"]``. For cheap envs such as MinAtar
    the synchronous vector env is much faster than the asynchronous one (about 66k against 5k steps/s
    measured on a 2-core machine), since it pays no inter-process cost.
    """
    vec = gym.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(num_envs)],
                                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    if seed is not None:
        vec.action_space.seed(seed)
        vec.reset(seed=seed)
    return vec


def check_discrete_actions(env: gym.Env, env_id: str, algo: str) -> int:
    """Return the number of actions, or raise a one-line :class:`EnvMismatchError` if they are not discrete."""
    space = env.action_space
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    kind = "continuous actions" if isinstance(space, spaces.Box) else "actions that are not one discrete choice"
    raise EnvMismatchError(f"{algo} picks one of n discrete actions, but {env_id} has {space} ({kind})")
