"""Encoders shared by every agent: an observation goes in, a feature vector comes out.

- :class:`MLP` for vector observations (classic control, popgym).
- :class:`NatureCNN` for 84x84 Atari frames (Mnih et al. 2015).
- :class:`MinAtarCNN` for MinAtar's 10x10 grids (Young & Tian 2019: one conv of 16 3x3 filters, FC 128).

:func:`make_encoder` picks one from the observation shape. Encoders take uint8 frames and scale
them (Atari by 1/255; MinAtar is already 0/1), so replay can keep frames as bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "MinAtarCNN", "NatureCNN", "make_encoder"]


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
