"""Drawing attention: where a DARQN looks in a frame (book chapter 6), and where an SA-DQN looks in its
history or among the entities of a frame (chapter 7).

A DARQN's attention is a distribution over the CNN's locations (8x8 on MinAtar, 7x7 on Atari), not over
pixels. To draw it over a frame, each location's weight is spread evenly over the pixels that location
*sees* (its receptive field), so the map keeps the total mass of 1 and a pixel's value is the attention
it receives. On MinAtar a location sees 3x3 cells; on Atari it sees 36x36 pixels at a stride of 8, so
neighbouring locations overlap heavily and the Atari maps are blurry by construction, not by smoothing.

Reading order: :func:`record_episode` (act and keep the weights), :func:`location_heatmap`,
:func:`render_frame`, then :func:`attention_strip` (a figure) and :func:`attention_gif` (an animation).
Chapter 7: :func:`history_matrix` and :func:`plot_history_attention` (which past steps each step read),
:func:`attention_by_lag` (how far back, on average), :func:`entity_heat` and :func:`entity_panel` (which
cells of a frame attend to which). Chapter 5: :func:`hierarchical_reads` and :func:`plot_two_level` (which chunks a
hierarchical memory picks, and where inside them it looks).

Around them: :func:`image_row` draws observations side by side (chapters 0 and 2), and :func:`stored_agent`
rebuilds a trained agent from the stored runs, with its environment, to record its attention (chapters 3, 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Episode", "attention_by_lag", "attention_gif", "attention_strip", "entity_heat", "entity_panel",
           "hierarchical_reads", "history_matrix", "location_heatmap", "overlay", "plot_history_attention",
           "image_row", "plot_two_level", "record_episode", "render_frame", "stored_agent"]


class Episode(dict):
    """One recorded episode: ``obs`` ``(T, *obs_shape)``, ``actions`` ``(T,)``, ``rewards`` ``(T,)``,
    ``weights`` (the attention used at each step: DARQN ``(T, L)`` over locations, SA-DQN
    ``(T, num_layers, H, K)`` by lag) and ``total`` (the return)."""

    __getattr__ = dict.__getitem__


def record_episode(agent: Any, env: Any, seed: int, epsilon: float = 0.0, max_steps: int = 1_000) -> Episode:
    """Play one episode with a DARQN or SA-DQN agent, keeping each step's observation and attention weights.

    The agent's state (DARQN's LSTM state, SA-DQN's context window) is carried through the episode as in
    training and evaluation: it is the acting path, the agent's ``act_with_attention``, not a replay.
    """
    if not hasattr(agent, "act_with_attention"):
        raise TypeError(f"{type(agent).__name__} has no attention to record; use a DARQN or SA-DQN agent")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    state, frames, actions, rewards, weights = agent.initial_state(), [], [], [], []
    for _ in range(max_steps):
        action, state, w = agent.act_with_attention(obs, state, epsilon, rng)
        frames.append(np.asarray(obs))
        weights.append(w)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return Episode(obs=np.stack(frames), actions=np.array(actions), rewards=np.array(rewards),
                   weights=np.stack(weights), total=float(sum(rewards)))


def location_heatmap(weights: np.ndarray, grid: tuple[int, int], receptive_field: int, stride: int) -> np.ndarray:
    """Spread attention over locations ``(..., L)`` onto pixels ``(..., H, W)``.

    Each location's weight is shared evenly by the ``receptive_field**2`` pixels it sees (a transposed
    convolution with a constant kernel), so every map still sums to the weights' sum (1).
    ``H = (grid[0] - 1) * stride + receptive_field``: 10 on MinAtar (8x8, 3, 1), 84 on Atari (7x7, 36, 8).
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"weights have {weights.shape[-1]} locations, the grid {grid} has {grid[0] * grid[1]}")
    lead = weights.shape[:-1]
    w = torch.from_numpy(weights.reshape(-1, 1, *grid))  # (N, 1, gh, gw)
    kernel = torch.full((1, 1, receptive_field, receptive_field), 1.0 / receptive_field**2)
    heat = F.conv_transpose2d(w, kernel, stride=stride)  # (N, 1, H, W)
    return heat[:, 0].numpy().reshape(*lead, *heat.shape[-2:])


# MinAtar: channel k is drawn in colour k; where objects overlap, the higher channel wins (as MinAtar's own
# display does). Colours from matplotlib's tab10, extended for games with more channels.
_PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                     [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
                     [174, 199, 232], [255, 187, 120]], dtype=np.float32) / 255.0


def render_frame(obs: np.ndarray) -> np.ndarray:
    """An observation as an RGB image ``(H, W, 3)`` in [0, 1].

    MinAtar ``(C, 10, 10)`` 0/1 channels: one colour per channel on black. Atari ``(C, 84, 84)``: the last
    (newest) grey frame.
    """
    obs = np.asarray(obs)
    if obs.ndim != 3:
        raise ValueError(f"expected an image observation (C, H, W); got shape {obs.shape}")
    if obs.shape[1:] == (10, 10):
        rgb = np.zeros((10, 10, 3), dtype=np.float32)
        for channel in range(obs.shape[0]):
            rgb[obs[channel] > 0] = _PALETTE[channel % len(_PALETTE)]
        return rgb
    grey = obs[-1].astype(np.float32) / 255.0
    return np.repeat(grey[..., None], 3, axis=-1)


def overlay(frame_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.65, cmap: str = "inferno") -> np.ndarray:
    """Blend a heatmap (scaled to its own maximum) over an RGB frame: ``(H, W, 3)`` in [0, 1]."""
    import matplotlib

    scaled = heat / max(float(heat.max()), 1e-12)
    colour = matplotlib.colormaps[cmap](scaled)[..., :3]
    mix = alpha * scaled[..., None]  # more attention, more colour; no attention leaves the frame as it is
    return np.clip((1 - mix) * frame_rgb + mix * colour, 0.0, 1.0)


def _heat(episode: Episode, cnn: Any) -> np.ndarray:
    return location_heatmap(episode.weights, cnn.grid, cnn.receptive_field, cnn.stride)  # (T, H, W)


def attention_strip(episode: Episode, cnn: Any, steps: list[int] | None = None, n: int = 8,
                    action_names: list[str] | None = None):
    """A strip of frames with the attention drawn over them. ``cnn``: the agent's
    :class:`~companion.agents.darqn.LocationCNN` (``agent.q.cnn``), which knows its grid and receptive field.

    ``steps``: which steps to show (default: ``n`` evenly spaced). Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    length = len(episode.obs)
    steps = steps if steps is not None else sorted({int(i) for i in np.linspace(0, length - 1, min(n, length))})
    heat = _heat(episode, cnn)
    fig, axes = plt.subplots(1, len(steps), figsize=(1.6 * len(steps), 2.0), squeeze=False)
    for ax, t in zip(axes[0], steps, strict=True):
        ax.imshow(overlay(render_frame(episode.obs[t]), heat[t]), interpolation="nearest")
        name = action_names[episode.actions[t]] if action_names else str(episode.actions[t])
        ax.set_title(f"t={t}\n{name}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def attention_gif(episode: Episode, cnn: Any, path: str | Path, fps: int = 8, size: int = 168,
                  max_frames: int = 300) -> Path:
    """Write an animated GIF of the episode, each frame with its attention overlay, side by side with the
    plain frame; ``size`` pixels per panel (nearest-neighbour upscaling keeps MinAtar's cells sharp)."""
    from PIL import Image

    heat = _heat(episode, cnn)
    images = []
    for t in range(min(len(episode.obs), max_frames)):
        frame = render_frame(episode.obs[t])
        panels = np.concatenate([frame, np.ones((frame.shape[0], 1, 3)), overlay(frame, heat[t])], axis=1)
        image = Image.fromarray((panels * 255).astype(np.uint8))
        scale = size / frame.shape[0]
        images.append(image.resize((round(image.width * scale), size), Image.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


# Chapter 7 -------------------------------------------------------------------------------------------------


def _layer_mean(weights: np.ndarray, layer: int | None, head: int | None) -> np.ndarray:
    """SA-DQN weights ``(T, N, H, K)`` -> ``(T, K)``: one layer (``None``: the mean of the layers), one head
    (``None``: the mean of the heads)."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 4:
        raise ValueError(f"expected SA-DQN weights (T, layers, heads, K); got shape {weights.shape}")
    w = weights.mean(axis=1) if layer is None else weights[:, layer]  # (T, H, K)
    return w.mean(axis=1) if head is None else w[:, head]


def history_matrix(weights: np.ndarray, layer: int | None = -1, head: int | None = None) -> np.ndarray:
    """SA-DQN attention by lag ``(T, N, H, K)`` (as recorded by :func:`record_episode`) -> ``(T, T)``:
    row ``t`` is where step ``t`` looked, column ``j`` the step it looked at (``j <= t``, so the matrix
    is lower-triangular and each row sums to 1)."""
    by_lag = _layer_mean(weights, layer, head)  # (T, K)
    steps, lags = by_lag.shape
    matrix = np.zeros((steps, steps), dtype=np.float32)
    for lag in range(min(lags, steps)):
        t = np.arange(lag, steps)
        matrix[t, t - lag] = by_lag[lag:, lag]
    return matrix


def attention_by_lag(weights: np.ndarray, layer: int | None = -1, head: int | None = None) -> np.ndarray:
    """How far back an SA-DQN looks: the mean weight on the observation ``k`` steps back, ``(K,)``,
    averaged over the steps ``t >= k`` (those that have a step ``k`` back) of one or more episodes.
    ``weights``: ``(T, N, H, K)``, or a list of such arrays (episodes of any lengths)."""
    episodes = [weights] if isinstance(weights, np.ndarray) else list(weights)
    rows = [_layer_mean(w, layer, head) for w in episodes]  # each (T, K)
    lags = rows[0].shape[1]
    total, count = np.zeros(lags), np.zeros(lags)
    for by_lag in rows:
        for lag in range(min(lags, len(by_lag))):
            total[lag] += by_lag[lag:, lag].sum()
            count[lag] += len(by_lag) - lag
    return np.divide(total, count, out=np.full(lags, np.nan), where=count > 0)


def plot_history_attention(weights: np.ndarray, layer: int | None = -1, head: int | None = None, ax=None,
                           marks: np.ndarray | None = None, title: str | None = None):
    """Draw :func:`history_matrix` (current step down, attended step across). ``marks``: a boolean ``(T,)``
    of steps to flag under the x axis (e.g. blanked frames of a flickering task). Returns the axes."""
    import matplotlib.pyplot as plt

    matrix = history_matrix(weights, layer, head)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    shown = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), 1), matrix)
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-6),
                      interpolation="nearest")
    if marks is not None:
        flagged = np.flatnonzero(np.asarray(marks)[: len(matrix)])
        ax.plot(flagged, np.full(len(flagged), len(matrix) - 0.5), "|", color="tab:red", markersize=8,
                clip_on=False)
    ax.set_xlabel("attended step j")
    ax.set_ylabel("current step t")
    ax.set_title(title or "SA-DQN attention over the history", fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def entity_heat(weights: np.ndarray, query: int | None = None) -> np.ndarray:
    """Entity attention ``(H, L, L)`` (rows: the attending cell) -> ``(L,)``, the mean over heads of
    row ``query`` (where that cell looks; sums to 1), or with ``query=None`` the attention each cell
    *receives*, averaged over the attending cells (also sums to 1)."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 3 or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"expected entity weights (heads, L, L); got shape {weights.shape}")
    mean = weights.mean(axis=0)  # (L, L)
    return mean.mean(axis=0) if query is None else mean[query]


def entity_panel(obs: np.ndarray, weights: np.ndarray, cnn: Any, queries: list[tuple[int, int]] = (),
                 names: list[str] | None = None):
    """One frame and its entity attention: the frame, the attention each cell receives, then for each
    query location ``(row, col)`` of the CNN grid where it looks (the query's receptive field outlined).
    ``cnn``: the entity network's :class:`~companion.networks.LocationCNN` (``agent.q.cnn``).
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frame = render_frame(obs)
    grid, rf, stride = cnn.grid, cnn.receptive_field, cnn.stride
    panels = [("frame", None), ("received", entity_heat(weights))]
    for i, (row, col) in enumerate(queries):
        if not (0 <= row < grid[0] and 0 <= col < grid[1]):
            raise ValueError(f"query {(row, col)} is outside the {grid} grid")
        label = names[i] if names else f"cell {(row, col)}"
        panels.append((f"{label} looks at", entity_heat(weights, row * grid[1] + col)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.3), squeeze=False)
    for i, (ax, (name, heat)) in enumerate(zip(axes[0], panels, strict=True)):
        image = frame if heat is None else overlay(frame, location_heatmap(heat, grid, rf, stride))
        ax.imshow(image, interpolation="nearest")
        if i >= 2:
            row, col = queries[i - 2]
            ax.add_patch(Rectangle((col * stride - 0.5, row * stride - 0.5), rf, rf, fill=False,
                                   edgecolor="white", linewidth=1.5, linestyle="--"))
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def hierarchical_reads(agent: Any, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a hierarchical-memory agent (``ppo-hmemory``) read at every step of one episode ``obs`` ``(T, ...)``,
    at both levels: chunk weights ``(H, T, G)`` and step weights ``(H, T, T)`` (row ``t``: the read at step ``t``;
    column ``j``: step ``j``'s slot; chunk ``g`` holds steps ``g c .. g c + c - 1``). The episode is re-read as
    learning reads it (:meth:`~companion.attention.HierarchicalMemory.read_sequence`), which gives the acting
    read's numbers."""
    net = agent.policy_network()
    if not getattr(net, "hierarchical", False):
        raise ValueError("hierarchical_reads needs an agent with a hierarchical memory (--algo ppo-hmemory)")
    x = torch.as_tensor(np.asarray(obs), device=agent.device)[None]
    x = x if x.dtype == torch.uint8 else x.float()
    steps = x.shape[1]
    starts = torch.zeros(1, steps, dtype=torch.bool, device=agent.device)
    starts[0, 0] = True
    with torch.no_grad():
        z = net.encoder(x.flatten(0, 1)).view(1, steps, -1)  # (1, T, F)
        _, weights = net.memory.read_sequence(net.query(z), net.slot(z), starts, need_weights=True)
    return weights.chunks[0].cpu().numpy(), weights.keys[0].cpu().numpy()


def plot_two_level(chunks: np.ndarray, keys: np.ndarray, step: int, chunk_size: int, marks: dict[str, int] = (),
                   title: str = ""):
    """Three panels for :func:`hierarchical_reads`' weights (means over heads where a map has no room for heads):
    the chunk weights of every step's read (which chunks each step picks), the step weights of every read
    (where inside them it looks), and, per head, the read at ``step``: each past step's weight, chunk borders
    dotted. ``marks``: labelled steps to flag (``{"cue": 0}``). Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    chunk_mean, key_mean = chunks.mean(0), keys.mean(0)  # (T, G), (T, T)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    image = axes[0].imshow(chunk_mean, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_xlabel(f"chunk g (steps g·{chunk_size} .. g·{chunk_size} + {chunk_size - 1})")
    axes[0].set_ylabel("step t (the read)")
    axes[0].set_title("level 1: the weight of each chunk", fontsize=9)
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
    shown = np.ma.masked_where(key_mean <= 0, key_mean)
    image = axes[1].imshow(shown, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1),
                           interpolation="nearest")
    axes[1].set_xlabel("step j (the slot read)")
    axes[1].set_title("level 2: the weight of each step (log scale)", fontsize=9)
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    past = np.arange(step)
    for h in range(keys.shape[0]):
        axes[2].plot(past, keys[h, step, :step], lw=1.2, label=f"head {h}")
    for border in range(chunk_size, step, chunk_size):
        axes[2].axvline(border - 0.5, color="grey", lw=0.5, ls=":")
    for name, at in dict(marks).items():
        for ax in axes[:2]:
            ax.axvline(at / (chunk_size if ax is axes[0] else 1), color="tab:red", lw=0.8, ls="--")
        axes[2].annotate(name, (at, 1.0), color="tab:red", fontsize=8, ha="left", va="top")
    axes[1].axhline(step, color="white", lw=0.6, ls="--")
    axes[2].set_yscale("log")
    axes[2].set_ylim(1e-4, 1.5)
    axes[2].set_xlabel("step j")
    axes[2].set_ylabel(f"weight in the read at step {step}")
    axes[2].set_title(f"the read at step {step}, head by head", fontsize=9)
    axes[2].legend(fontsize="small", loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# Observations and stored agents (chapters 0, 2, 3 and 7) -------------------------------------------------


def image_row(images: Sequence[np.ndarray], titles: Sequence[str], *, cmap: str | None = None,
              vmin: float | None = None, vmax: float | None = None, width_ratios: Sequence[float] | None = None,
              figsize: tuple[float, float] | None = None):
    """Observations side by side, one panel each, without ticks: what an agent is given to see.

    Chapter 0 draws a raw Atari frame beside the channels of a MinAtar grid; chapter 2 draws a raw frame, its
    preprocessed version and the stack of four that DQN reads.

    Args:
        images: One image per panel: an RGB frame ``(H, W, 3)`` or one channel ``(H, W)``. Panels may differ
            in size (a raw Atari frame is 210x160x3, a processed one 84x84).
        titles: One title per panel.
        cmap: The colour map of the one-channel images, e.g. ``"gray"``; RGB images ignore it.
        vmin: The value drawn as the colour map's lowest colour (default: each image's minimum).
        vmax: The value drawn as its highest (default: each image's maximum).
        width_ratios: The panels' relative widths (default: equal), e.g. wider for a raw frame.
        figsize: The figure's size in inches (default: 2.4 per unit of width by 3).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    ratios = list(width_ratios) if width_ratios is not None else [1.0] * len(images)
    if len(ratios) != len(images):
        raise ValueError(f"{len(images)} images but {len(ratios)} width ratios")
    fig, axes = plt.subplots(1, len(images), figsize=figsize or (2.4 * sum(ratios), 3.0), width_ratios=ratios,
                             squeeze=False)
    for ax, image, title in zip(axes[0], images, titles, strict=True):
        ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def stored_agent(root: str | Path | None, pattern: str, device: str = "cpu") -> tuple[Any, Any] | None:
    """A trained agent from the stored runs, with the environment it trained on, for drawing its attention.

    Chapter 3 draws where the seed-0 attention critics look, chapter 7 where SA-DQN looks. The agent is
    rebuilt by :func:`companion.train.load_agent` from the first finished run that kept its policy
    (``policy.pt``), and the environment by :func:`companion.train.make_run_env`, as the run made it (frame
    stack, hidden or flickering observations).

    Args:
        root: The results folder, as :func:`companion.records.results_dir` finds it, or ``None``.
        pattern: A glob under ``root`` for run directories, e.g. ``"ch3-pomdp/ppo-attn/*/seed0"``.
        device: Where the agent's networks go.

    Returns:
        ``(agent, env)``, or ``None`` when no finished run matching ``pattern`` kept its policy (no stored
        results, e.g. on Colab).
    """
    from companion.plots import finished_runs
    from companion.train import load_agent, make_run_env

    runs = [run for run in finished_runs(root, pattern) if (run / "policy.pt").exists()]
    if not runs:
        return None
    agent, run, config = load_agent(runs[0], device=device)
    return agent, make_run_env(run, config)
