import random

import numpy as np
import pytest
import torch

from companion.envs import make_env
from companion.utils import DEVICE_ENV_VAR, get_device, progress, seed_everything


def _draws():
    return random.random(), np.random.rand(), torch.rand(3).tolist()


def test_seed_everything_repeats_every_generator():
    rng_a = seed_everything(123)
    first = _draws(), rng_a.random()
    rng_b = seed_everything(123)
    second = _draws(), rng_b.random()
    assert first == second
    seed_everything(124)
    assert _draws() != first[0]


def test_seed_everything_seeds_env_and_its_action_space():
    env = make_env("CartPole-v1")
    seed_everything(7, env)
    obs_a, actions_a = env.reset(seed=7)[0], [env.action_space.sample() for _ in range(10)]
    seed_everything(7, env)
    obs_b, actions_b = env.reset(seed=7)[0], [env.action_space.sample() for _ in range(10)]
    np.testing.assert_array_equal(obs_a, obs_b)
    assert actions_a == actions_b


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        seed_everything(bad)


def test_get_device_explicit_env_and_default(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    assert get_device("cpu") == torch.device("cpu")
    assert get_device().type in {"cpu", "cuda", "mps"}
    monkeypatch.setenv(DEVICE_ENV_VAR, "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_errors_are_clear(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="not a torch device"):
        get_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")
        monkeypatch.setenv(DEVICE_ENV_VAR, "cuda:0")
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device()


def test_progress_iterates_and_can_be_disabled(monkeypatch):
    assert list(progress(range(5), desc="x")) == list(range(5))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = progress(total=10)
    assert bar.disable
    assert progress(total=10, disable=False).disable  # the environment wins over the caller
    bar.update(10)
    bar.close()
    monkeypatch.delenv("TQDM_DISABLE")
    assert progress(total=3, disable=True).disable
