import gymnasium as gym
import numpy as np
import pytest

from companion.envs import make_env, register_envs


def test_register_envs_is_idempotent_and_registers_each_family():
    register_envs()
    register_envs()
    for env_id in ("ALE/Seaquest-v5", "MinAtar/Breakout-v1", "popgym-RepeatPreviousEasy-v0"):
        assert env_id in gym.registry


@pytest.mark.parametrize(
    ("env_id", "shape"),
    [("CartPole-v1", (4,)), ("ALE/Seaquest-v5", (210, 160, 3)), ("MinAtar/Breakout-v1", (10, 10, 4))],
)
def test_make_env_with_seed_is_reproducible(env_id, shape):
    first = make_env(env_id, seed=3).reset(seed=3)[0]
    second = make_env(env_id, seed=3).reset(seed=3)[0]
    assert np.asarray(first).shape == shape
    np.testing.assert_array_equal(first, second)


def test_unknown_id_names_the_id_and_suggests_a_close_one():
    with pytest.raises(ValueError) as info:
        make_env("popgym-RepeatPrevious-v0")  # popgym ids carry a difficulty
    message = str(info.value)
    assert "'popgym-RepeatPrevious-v0'" in message
    assert "popgym-RepeatPreviousEasy-v0" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="unknown env id 'NoSuchEnv-v9'$"):
        make_env("NoSuchEnv-v9")
