import gymnasium as gym
import numpy as np
import pytest

from companion.envs import EnvMismatchError, check_discrete_actions, make_env, make_vec_env, register_envs


def test_register_envs_is_idempotent_and_registers_each_family():
    register_envs()
    register_envs()
    for env_id in ("ALE/Seaquest-v5", "MinAtar/Breakout-v1", "popgym-RepeatPreviousEasy-v0"):
        assert env_id in gym.registry


@pytest.mark.parametrize(
    ("env_id", "shape"),
    [("CartPole-v1", (4,)), ("ALE/Seaquest-v5", (1, 84, 84)), ("MinAtar/Breakout-v1", (4, 10, 10))],
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


# --- chapter 2 pipelines and wrappers --------------------------------------------------------------


@pytest.mark.parametrize(("stack", "shape"), [(None, (1, 84, 84)), (1, (1, 84, 84)), (4, (4, 84, 84))])
def test_ale_pipeline_gives_uint8_84x84(stack, shape):
    env = make_env("ALE/Breakout-v5", frame_stack=stack, seed=0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == shape and obs.shape == shape and obs.dtype == np.uint8
    obs, *_ = env.step(1)
    assert obs.shape == shape


def test_minatar_is_channels_first_zero_one_uint8():
    raw = gym.make("MinAtar/Breakout-v1")
    ours = make_env("MinAtar/Breakout-v1")
    raw_obs, _ = raw.reset(seed=4)
    obs, _ = ours.reset(seed=4)
    assert obs.shape == (4, 10, 10) and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
    np.testing.assert_array_equal(obs, np.moveaxis(raw_obs, -1, 0))
    assert ours.spec.max_episode_steps or any(isinstance(w, gym.wrappers.TimeLimit) for w in _wrappers(ours))
    assert make_env("MinAtar/Breakout-v1", frame_stack=2).observation_space.shape == (8, 10, 10)


def _wrappers(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def test_mask_observation_hides_cartpole_velocities():
    full = make_env("CartPole-v1")
    masked = make_env("CartPole-v1", hide=[1, 3])
    a, _ = full.reset(seed=1)
    b, _ = masked.reset(seed=1)
    assert masked.observation_space.shape == (2,)
    np.testing.assert_array_equal(b, a[[0, 2]])
    assert make_env("CartPole-v1", hide=[1, 3], frame_stack=4).observation_space.shape == (8,)
    with pytest.raises(ValueError, match="some but not all"):
        make_env("CartPole-v1", hide=[0, 1, 2, 3])


def test_flicker_blanks_at_rate_p_and_is_seeded():
    def blank_pattern(seed):
        env = make_env("CartPole-v1", flicker=0.5)
        env.reset(seed=seed)
        pattern = []
        for _ in range(2000):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            pattern.append(not obs.any())
            if terminated or truncated:
                env.reset(seed=seed + len(pattern))
        return np.array(pattern)

    pattern = blank_pattern(3)
    assert 0.45 < pattern.mean() < 0.55  # binomial sd at n=2000 is 0.011
    env = make_env("CartPole-v1", flicker=0.25)
    env.reset(seed=0)
    seen = [not env.step(0)[0].any() for _ in range(8)]
    env.reset(seed=0)
    assert seen == [not env.step(0)[0].any() for _ in range(8)]


def test_popgym_observations_are_one_hot_vectors():
    env = make_env("popgym-RepeatPreviousEasy-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4,) and obs.sum() == 1


def test_an_env_that_does_not_fit_is_one_line_naming_it():
    with pytest.raises(EnvMismatchError) as info:
        check_discrete_actions(make_env("Pendulum-v1"), "Pendulum-v1", "DQN")
    message = str(info.value)
    assert "\n" not in message and "Pendulum-v1" in message and "continuous actions" in message
    assert check_discrete_actions(make_env("CartPole-v1"), "CartPole-v1", "DQN") == 2


def test_vector_env_reports_final_observations():
    vec = make_vec_env("CartPole-v1", 3, seed=0)
    assert vec.observation_space.shape == (3, 4)
    for _ in range(200):
        _, _, terminated, truncated, info = vec.step(np.zeros(3, dtype=int))
        if (terminated | truncated).any():
            assert info["_final_obs"][terminated | truncated].all()
            break
    else:
        pytest.fail("no episode ended in 200 steps of always pushing left")


def test_previous_action_and_reward_are_appended():
    env = make_env("CartPole-v1", hide=[1, 3], prev_action=True, prev_reward=True)
    assert env.observation_space.shape == (2 + 2 + 1,)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and (obs[2:] == 0).all()  # nothing before the first step
    obs, reward, *_ = env.step(1)
    assert list(obs[2:]) == [0.0, 1.0, reward]
    obs, _ = env.reset(seed=1)
    assert (obs[2:] == 0).all()  # a new episode forgets
    assert make_env("CartPole-v1", prev_action=True).observation_space.shape == (6,)
    with pytest.raises(EnvMismatchError, match="1-D Box"):
        make_env("MinAtar/Breakout-v1", prev_action=True)
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():  # remarks, not failures: infinite reward bounds, a wrapped env
        warnings.filterwarnings("ignore", message=".*infinity.*")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(make_env("CartPole-v1", prev_action=True, prev_reward=True), skip_render_check=True)


def test_episode_replay_puts_a_sub_env_back_mid_episode():
    from companion.envs import EpisodeReplay

    actions = [0, 1, 1, 0, 1]
    plain = make_env("popgym-PositionOnlyCartPoleEasy-v0")
    obs, _ = plain.reset(seed=7)
    for a in actions:
        obs, *_ = plain.step(a)
    replayed = EpisodeReplay(make_env("popgym-PositionOnlyCartPoleEasy-v0"), index=2)
    again, _ = replayed.reset(seed=7, options={"replay": {2: actions, 0: [1]}})
    np.testing.assert_array_equal(again, obs)
    fresh, _ = replayed.reset(seed=7, options={"replay": {0: actions}})  # another env's list: a plain reset
    np.testing.assert_array_equal(fresh, plain.reset(seed=7)[0])
    with pytest.raises(RuntimeError, match="not deterministic"):
        EpisodeReplay(make_env("CartPole-v1"), 0).reset(seed=0, options={"replay": {0: [0] * 600}})


@pytest.mark.parametrize("kwargs", [dict(hide=[1, 3]), dict(flicker=0.5), dict(prev_action=True, prev_reward=True),
                                    dict(hide=[1, 3], flicker=0.5, frame_stack=4)])
def test_pomdp_wrappers_pass_gymnasiums_check_env(kwargs):
    """Issue 14: the wrappers record their constructor arguments, so gymnasium can re-create them."""
    from gymnasium.utils.env_checker import check_env

    env = make_env("CartPole-v1", **kwargs)
    with pytest.warns(UserWarning, match="different from the unwrapped"):  # check_env prefers raw envs
        check_env(env, skip_render_check=True)
    assert env.spec is not None and env.spec.additional_wrappers  # each wrapper is recorded in the spec


def test_wrappers_record_the_arguments_they_were_given():
    env = make_env("CartPole-v1", hide=[1], flicker=0.3, prev_action=True, prev_reward=False)
    recorded = {w.name: w.kwargs for w in env.spec.additional_wrappers}
    assert recorded["MaskObservation"] == {"hidden": (1,)}
    assert recorded["FlickerObservation"] == {"p": 0.3}
    assert recorded["PreviousActionReward"] == {"reward": False}
    assert gym.make(env.spec).observation_space.shape == env.observation_space.shape
