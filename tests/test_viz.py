"""Attention drawn over frames: the maps keep their mass and land where the locations look."""

import numpy as np
import pytest
import torch
from PIL import Image

from companion.agents import DARQN, SADQN, EntitySADQN
from companion.envs import make_env
from companion.viz import (
    attention_by_lag,
    attention_gif,
    attention_strip,
    entity_heat,
    entity_panel,
    history_matrix,
    location_heatmap,
    overlay,
    plot_history_attention,
    record_episode,
    render_frame,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(("grid", "rf", "stride", "size"), [((8, 8), 3, 1, 10), ((7, 7), 36, 8, 84)])
def test_heatmap_keeps_the_mass_and_has_the_frame_size(grid, rf, stride, size):
    weights = np.random.default_rng(0).dirichlet(np.ones(grid[0] * grid[1]), size=(2, 3))  # (2, 3, L)
    heat = location_heatmap(weights, grid, rf, stride)
    assert heat.shape == (2, 3, size, size)
    np.testing.assert_allclose(heat.sum(axis=(-1, -2)), 1.0, rtol=1e-5)


def test_heatmap_puts_a_location_on_its_receptive_field():
    weights = np.zeros(64)
    weights[1 * 8 + 6] = 1.0  # row 1, column 6 of the 8x8 MinAtar grid: cells rows 1-3, columns 6-8
    heat = location_heatmap(weights, (8, 8), 3, 1)
    expected = np.zeros((10, 10))
    expected[1:4, 6:9] = 1 / 9
    np.testing.assert_allclose(heat, expected, atol=1e-7)
    with pytest.raises(ValueError, match="49 locations"):
        location_heatmap(np.ones(49) / 49, (8, 8), 3, 1)


def test_the_receptive_fields_match_the_cnn():
    """Light one input pixel: only the locations whose stated receptive field holds it may change."""
    for obs_shape in ((4, 10, 10), (1, 84, 84)):
        cnn = DARQN(obs_shape, 3, DARQN.preset("MinAtar" if obs_shape[1] == 10 else "ALE"), CPU).q.cnn
        y, x = obs_shape[1] // 2, 3
        base = torch.zeros(1, *obs_shape)
        bumped = base.clone()
        bumped[0, :, y, x] = 1.0 / cnn.scale
        with torch.no_grad():
            changed = (cnn(bumped) - cnn(base)).abs().sum(-1)[0].view(cnn.grid) > 0
        rf, s = cnn.receptive_field, cnn.stride
        rows, cols = np.arange(cnn.grid[0]) * s, np.arange(cnn.grid[1]) * s
        allowed = ((rows <= y) & (y < rows + rf))[:, None] & ((cols <= x) & (x < cols + rf))[None, :]
        assert changed.any() and not (changed.numpy() & ~allowed).any()


def test_render_frame():
    obs = np.zeros((3, 10, 10), dtype=np.uint8)
    obs[0, 2, 2] = obs[2, 5, 5] = 1
    rgb = render_frame(obs)
    assert rgb.shape == (10, 10, 3) and rgb[0, 0].sum() == 0 and rgb[2, 2].sum() > 0
    assert not np.allclose(rgb[2, 2], rgb[5, 5])
    assert render_frame(np.full((4, 84, 84), 255, dtype=np.uint8)).shape == (84, 84, 3)
    with pytest.raises(ValueError, match="image observation"):
        render_frame(np.zeros(4))
    heat = np.zeros((10, 10))
    heat[2, 2] = 1.0
    blended = overlay(rgb, heat)
    np.testing.assert_array_equal(blended[0, 0], rgb[0, 0])  # no attention: the frame unchanged
    assert blended.min() >= 0 and blended.max() <= 1


def test_record_episode_keeps_the_acting_weights(tmp_path):
    env = make_env("MinAtar/Breakout-v1")
    torch.manual_seed(0)
    agent = DARQN(env.observation_space.shape, int(env.action_space.n), DARQN.preset("MinAtar"), CPU)
    episode = record_episode(agent, env, seed=3, epsilon=0.5, max_steps=40)
    steps = len(episode.obs)
    assert 0 < steps <= 40 and episode.weights.shape == (steps, 64) and episode.actions.shape == (steps,)
    np.testing.assert_allclose(episode.weights.sum(-1), 1.0, rtol=1e-5)
    # Soft attention from a zero state at the episode start: replaying the frames gives the same weights.
    np.testing.assert_allclose(agent.attention_map(episode.obs), episode.weights, rtol=1e-4, atol=1e-6)
    fig = attention_strip(episode, agent.q.cnn, n=4)
    assert len(fig.axes) == min(4, steps)
    path = attention_gif(episode, agent.q.cnn, tmp_path / "episode.gif", size=40)
    with Image.open(path) as gif:
        assert gif.n_frames == steps and gif.size[1] == 40
    with pytest.raises(TypeError, match="no attention"):
        record_episode(object(), env, seed=0)


def test_sadqn_records_where_each_step_looked():
    env = make_env("CartPole-v1", flicker=0.5)
    config = SADQN.preset("gym")
    config.seq_len = 6
    torch.manual_seed(0)
    agent = SADQN(env.observation_space.shape, 2, config, CPU)
    episode = record_episode(agent, env, seed=1, epsilon=0.3, max_steps=30)
    steps, k = len(episode.obs), agent.context_len
    assert episode.weights.shape == (steps, config.num_layers, config.num_heads, k)
    np.testing.assert_allclose(episode.weights.sum(-1), 1.0, rtol=1e-5)
    for t in range(min(steps, k - 1)):  # no weight on steps before the episode
        assert not episode.weights[t, ..., t + 1:].any()
    # The last step read the last context_len observations: the same weights as reading them afresh.
    last = agent.attention_weights(episode.obs[-k:])  # per layer (H, T, T)
    fresh = np.stack([w[:, -1][..., ::-1] for w in last])  # (N, H, T), lag 0 first
    np.testing.assert_allclose(episode.weights[-1][..., : fresh.shape[-1]], fresh, rtol=1e-4, atol=1e-6)
    # act_with_attention is act plus the weights: same actions from the same random stream.
    rng_a, rng_b, state_a, state_b = np.random.default_rng(5), np.random.default_rng(5), None, None
    for obs in episode.obs[:10]:
        action_a, state_a = agent.act(obs, state_a, 0.5, rng_a)
        action_b, state_b, _ = agent.act_with_attention(obs, state_b, 0.5, rng_b)
        assert action_a == action_b and np.array_equal(state_a, state_b)
    matrix = history_matrix(episode.weights, layer=None)
    assert matrix.shape == (steps, steps) and not np.triu(matrix, 1).any()
    np.testing.assert_allclose(matrix.sum(1), 1.0, rtol=1e-5)  # every step spread 1 over its context
    ax = plot_history_attention(episode.weights, marks=~episode.obs.any(axis=1))
    assert ax.get_xlabel() == "attended step j"


def test_attention_by_lag_averages_where_a_lag_exists():
    steps, k = 5, 4
    weights = np.zeros((steps, 1, 2, k))
    weights[:2, ..., 0] = 1.0  # the first two steps can only look at themselves
    weights[2:, ..., 2] = 1.0  # later steps look two back
    profile = attention_by_lag(weights)
    np.testing.assert_allclose(profile, [2 / 5, 0.0, 1.0, 0.0])  # lag 2 exists at t = 2, 3, 4
    assert np.isnan(attention_by_lag([weights[:2]])[2])  # a 2-step episode has nothing 2 steps back
    np.testing.assert_allclose(history_matrix(weights)[4], [0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="SA-DQN weights"):
        attention_by_lag(np.zeros((3, 4)))


def test_entity_attention_panel():
    env = make_env("MinAtar/Breakout-v1")
    torch.manual_seed(0)
    agent = EntitySADQN(env.observation_space.shape, int(env.action_space.n), EntitySADQN.preset("MinAtar"), CPU)
    obs, _ = env.reset(seed=0)
    weights = agent.entity_attention(obs)[0]  # (H, 64, 64)
    np.testing.assert_allclose(entity_heat(weights).sum(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(entity_heat(weights, query=9), weights.mean(0)[9], rtol=1e-6)
    fig = entity_panel(obs, weights, agent.q.cnn, queries=[(7, 3), (0, 0)], names=["paddle", "corner"])
    assert [ax.get_title() for ax in fig.axes] == ["frame", "received", "paddle looks at", "corner looks at"]
    with pytest.raises(ValueError, match="outside"):
        entity_panel(obs, weights, agent.q.cnn, queries=[(8, 0)])
    with pytest.raises(ValueError, match="entity weights"):
        entity_heat(weights[0])


def test_hierarchical_reads_match_acting_and_draw(tmp_path):
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    from companion.agents import PPOHierarchicalMemory, PPOMemory
    from companion.viz import hierarchical_reads, plot_two_level, record_episode

    config = dataclasses.replace(PPOHierarchicalMemory.preset("gym"), memory=16, chunk_size=4, top_k=2)
    torch.manual_seed(0)
    agent = PPOHierarchicalMemory((6,), 2, config, torch.device("cpu"))
    # noisy corridor steps, so that no two chunks tie: CueRecall's identical corridor chunks do, and the acting and
    # the re-reading path may keep different ones of the same content (the same read, the weights elsewhere)
    env = make_env("CueRecall-v0", delay=16, noise=1.0, noise_dims=2)
    episode = record_episode(agent, env, seed=1, max_steps=18)
    chunks, keys = hierarchical_reads(agent, episode.obs)
    assert chunks.shape == (4, 18, 5) and keys.shape == (4, 18, 18)
    acting = episode.weights[:, 0]  # (T, H, M + 1) by lag, from act_with_attention
    for t in range(1, 18):
        for lag in range(1, min(t, 16) + 1):
            np.testing.assert_allclose(acting[t, :, lag], keys[:, t, t - lag], atol=1e-6)
    assert ((chunks > 0).sum(-1)[:, 1:] <= 2).all() and np.allclose(keys[:, 1:].sum(-1), 1.0, atol=1e-5)
    fig = plot_two_level(chunks, keys, step=17, chunk_size=4, marks={"cue": 0})
    fig.savefig(tmp_path / "two_level.png")
    flat = PPOMemory((6,), 2, PPOMemory.preset("gym"), torch.device("cpu"))
    with pytest.raises(ValueError, match="hierarchical"):
        hierarchical_reads(flat, episode.obs)


# Observations and stored agents (chapters 0, 2, 3 and 7) -------------------------------------------------


def test_image_row_draws_each_image_with_its_title_and_no_ticks():
    import matplotlib

    matplotlib.use("Agg")
    from companion.viz import image_row

    rgb = np.zeros((21, 16, 3), dtype=np.uint8)  # (H, W, 3)
    grey = np.arange(100, dtype=float).reshape(10, 10)  # (H, W)
    fig = image_row([rgb, grey, grey], ["frame", "a", "b"], cmap="gray", vmin=0, vmax=1, width_ratios=[2, 1, 1],
                    figsize=(8, 3))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["frame", "a", "b"]
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in axes)
    assert axes[0].get_images()[0].get_array().shape == (21, 16, 3)
    image = axes[1].get_images()[0]
    assert image.get_cmap().name == "gray" and image.get_clim() == (0, 1)
    assert list(axes[0].get_subplotspec().get_gridspec().get_width_ratios()) == [2, 1, 1]  # a wider raw frame
    assert tuple(fig.get_size_inches()) == (8, 3)
    assert image_row([grey], ["one"]).axes[0].get_images()[0].get_clim() == (0, 99)  # default: the image's range
    with pytest.raises(ValueError, match="titles"):
        image_row([grey, grey], ["one"])
    with pytest.raises(ValueError, match="width ratios"):
        image_row([grey], ["one"], width_ratios=[1, 2])


def test_stored_agent_rebuilds_the_agent_and_its_env(tmp_path):
    from companion.train import build_config, train
    from companion.viz import stored_agent

    run, config = build_config("dqn", "CartPole-v1", seed=3, budget="quick", total_steps=600, hide=(1, 3),
                               overrides={"eval_every": 300, "learning_starts": 200})
    trained = train(run, config, tmp_path / "ch" / "dqn" / "seed0", show_progress=False)
    (tmp_path / "ch" / "dqn" / "seed0" / "checkpoint.pt").unlink(missing_ok=True)  # as in a fresh clone
    agent, env = stored_agent(tmp_path, "ch/dqn/seed*")
    assert env.observation_space.shape == (2,)  # the run's env: velocities hidden
    obs = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    np.testing.assert_array_equal(agent.q_values(obs), trained.agent.q_values(obs))
    assert stored_agent(tmp_path, "ch/drqn/seed*") is None
    assert stored_agent(None, "ch/dqn/seed*") is None
    (tmp_path / "ch" / "dqn" / "seed0" / "policy.pt").unlink()
    assert stored_agent(tmp_path, "ch/dqn/seed*") is None  # a run that kept no policy is passed over
