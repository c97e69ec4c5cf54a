"""Encoders shared by every agent: an observation goes in, a feature vector comes out.

- :class:`MLP` for vector observations (classic control, popgym).
- :class:`NatureCNN` for 84x84 Atari frames (Mnih et al. 2015).
- :class:`MinAtarCNN` for MinAtar's 10x10 grids (Young & Tian 2019: one conv of 16 3x3 filters, FC 128).
- :class:`LocationCNN` keeps the feature map as a set of location vectors ``(B, L, D)``, for agents
  that attend over image locations (DARQN, chapter 6; the entity SA-DQN, chapter 7).

:func:`make_encoder` picks one from the observation shape. Encoders take uint8 frames and scale
them (Atari by 1/255; MinAtar is already 0/1), so replay can keep frames as bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "LocationCNN", "MinAtarCNN", "NatureCNN", "make_encoder"]


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU`` per hidden width. ``out_dim`` is the last hidden width.

    Input ``(B, *obs_shape)``; output ``(B, out_dim)``.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.float())


class NatureCNN(nn.Module):
    """The DQN torso: conv 32@8x8/4, 64@4x4/2, 64@3x3/1, FC 512 (Mnih et al. 2015).

    Input ``(B, C, 84, 84)`` uint8 or float in [0, 255]; output ``(B, 512)``.
    """

    def __init__(self, in_channels: int, out_dim: int = 512) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7, out_dim), nn.ReLU())
        self.out_dim = out_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.conv(obs.float() / 255.0))


class MinAtarCNN(nn.Module):
    """MinAtar's network torso: conv 16@3x3/1 (no padding), ReLU, FC 128 (Young & Tian 2019).

    Input ``(B, C, 10, 10)`` of 0/1; output ``(B, 128)``.
    """

    def __init__(self, in_channels: int, out_dim: int = 128, grid: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=1), nn.ReLU(), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(16 * (grid - 2) ** 2, out_dim), nn.ReLU())
        self.out_dim = out_dim

    def forward(self, obs: Tensor) -> Tensor:
        return self.fc(self.conv(obs.float()))


def make_encoder(obs_shape: Sequence[int], hidden: Sequence[int] = (256, 256)) -> MLP | NatureCNN | MinAtarCNN:
    """The encoder for an observation shape: ``(C, 84, 84)`` -> NatureCNN, ``(C, 10, 10)`` -> MinAtarCNN,
    anything else -> :class:`MLP` over the flattened observation with ``hidden`` widths."""
    shape = tuple(obs_shape)
    if len(shape) == 3 and shape[1:] == (84, 84):
        return NatureCNN(shape[0])
    if len(shape) == 3 and shape[1:] == (10, 10):
        return MinAtarCNN(shape[0])
    return MLP(math.prod(shape), hidden)


class LocationCNN(nn.Module):
    """A CNN whose output is a set of location vectors ``(B, L, D)`` rather than one flat vector.

    - Atari ``(C, 84, 84)``: conv 32@8x8/4, 64@4x4/2, 256@3x3/1 -> 7x7 locations of 256 (Sorokin et al.).
    - MinAtar ``(C, 10, 10)``: one conv 32@3x3/1 -> 8x8 locations of 32: MinAtar's own network's layer
      (Young & Tian 2019) with twice its 16 filters.
    """

    def __init__(self, obs_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"DARQN needs image observations (C, 84, 84) or (C, 10, 10); got {tuple(obs_shape)}")
        channels, height, width = obs_shape
        if (height, width) == (84, 84):
            self.conv = nn.Sequential(nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(),
                                      nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                                      nn.Conv2d(64, 256, 3, stride=1), nn.ReLU())
            self.scale, self.grid, self.dim = 1 / 255.0, (7, 7), 256
            # Location (i, j) sees pixels [8i, 8i + 36) x [8j, 8j + 36): receptive field 8 + 3*4 + 2*8 = 36,
            # stride 4 * 2 * 1 = 8.
            self.receptive_field, self.stride = 36, 8
        elif (height, width) == (10, 10):
            self.conv = nn.Sequential(nn.Conv2d(channels, 32, 3), nn.ReLU())
            self.scale, self.grid, self.dim = 1.0, (8, 8), 32
            self.receptive_field, self.stride = 3, 1  # location (i, j) sees cells [i, i + 3) x [j, j + 3)
        else:
            raise ValueError(f"DARQN needs image observations (C, 84, 84) or (C, 10, 10); got {obs_shape}")
        self.num_locations = self.grid[0] * self.grid[1]

    def forward(self, obs: Tensor) -> Tensor:
        features = self.conv(obs.float() * self.scale)  # (B, D, H', W')
        return features.flatten(2).transpose(1, 2)  # (B, L, D), locations in row-major order
