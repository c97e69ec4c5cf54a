"""Drawing attention over frames (book chapter 6): where a DARQN looks, step by step.

A DARQN's attention is a distribution over the CNN's locations (8x8 on MinAtar, 7x7 on Atari), not over
pixels. To draw it over a frame, each location's weight is spread evenly over the pixels that location
*sees* (its receptive field), so the map keeps the total mass of 1 and a pixel's value is the attention
it receives. On MinAtar a location sees 3x3 cells; on Atari it sees 36x36 pixels at a stride of 8, so
neighbouring locations overlap heavily and the Atari maps are blurry by construction, not by smoothing.

Reading order: :func:`record_episode` (act and keep the weights), :func:`location_heatmap`,
:func:`render_frame`, then :func:`attention_strip` (a figure) and :func:`attention_gif` (an animation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Episode", "attention_gif", "attention_strip", "location_heatmap", "overlay", "record_episode",
           "render_frame"]


class Episode(dict):
    """One recorded episode: ``obs`` ``(T, C, H, W)``, ``actions`` ``(T,)``, ``rewards`` ``(T,)``,
    ``weights`` ``(T, L)`` (the attention used at each step) and ``total`` (the return)."""

    __getattr__ = dict.__getitem__


def record_episode(agent: Any, env: Any, seed: int, epsilon: float = 0.0, max_steps: int = 1_000) -> Episode:
    """Play one episode with a DARQN agent, keeping each step's observation and attention weights.

    The LSTM state is carried through the episode as in training and evaluation (it is the acting
    path, :meth:`~companion.agents.darqn.DARQN.act_with_attention`, not a replay from a zero state).
    """
    if not hasattr(agent, "act_with_attention"):
        raise TypeError(f"{type(agent).__name__} has no attention to record; use a DARQN agent")
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
