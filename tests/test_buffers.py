"""Replay buffers against ground truth: observation value = the time step at which it was seen."""

import numpy as np
import pytest
import torch

from companion.buffers import ReplayBuffer, SequenceReplayBuffer


def fill(buffer, n_steps, episode_length, truncate=False):
    """Episodes of ``episode_length`` steps; obs at step t is t, the last obs of an episode is -(t+1)."""
    for t in range(n_steps):
        ends = (t + 1) % episode_length == 0
        next_obs = np.full(buffer.obs_shape, -(t + 1) if ends else t + 1, np.float32)
        buffer.add(np.full(buffer.obs_shape, t, np.float32), t % 3, float(t), next_obs,
                   terminated=ends and not truncate, truncated=ends and truncate)


def test_transitions_are_consistent_after_wraparound():
    buffer = ReplayBuffer(7, (2,), np.float32, seed=0)
    fill(buffer, 23, episode_length=5)
    assert len(buffer) == 7
    batch = buffer.sample(500)
    t = batch.obs[:, 0]
    assert set(t.astype(int)) == set(range(17, 23))  # 7 slots, minus the write head: the 6 newest
    np.testing.assert_array_equal(batch.rewards, t)
    np.testing.assert_array_equal(batch.actions, t.astype(int) % 3)
    ends = (t + 1) % 5 == 0
    np.testing.assert_array_equal(batch.terminated, ends)
    np.testing.assert_array_equal(batch.next_obs[:, 0], np.where(ends, -(t + 1), t + 1))


def test_truncation_ends_the_episode_but_does_not_terminate():
    buffer = ReplayBuffer(50, (1,), np.float32, seed=0)
    fill(buffer, 20, episode_length=5, truncate=True)
    batch = buffer.sample(200)
    assert not batch.terminated.any()
    t = batch.obs[:, 0]
    np.testing.assert_array_equal(batch.next_obs[:, 0], np.where((t + 1) % 5 == 0, -(t + 1), t + 1))


def test_uint8_frames_stay_uint8_and_errors():
    buffer = ReplayBuffer(10, (4, 84, 84), np.uint8)
    assert buffer.obs.dtype == np.uint8 and buffer.obs.nbytes == 10 * 4 * 84 * 84
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(1, (1,))


def test_sequences_are_consecutive_and_masked_after_the_episode_ends():
    buffer = SequenceReplayBuffer(40, (1,), np.float32, seq_len=6, seed=1)
    fill(buffer, 100, episode_length=7)
    batch = buffer.sample(300)
    t = batch.obs[..., 0]  # (B, T)
    assert batch.obs.shape == (300, 6, 1) and batch.mask.shape == (300, 6)
    np.testing.assert_array_equal(np.diff(t, axis=1), 1)  # consecutive, never across the ring's seam
    assert t.min() >= 100 - 39  # only valid slots
    ends = (t + 1) % 7 == 0
    for row_mask, row_ends in zip(batch.mask, ends, strict=True):
        first_end = np.flatnonzero(row_ends)
        expected = np.arange(6) <= (first_end[0] if len(first_end) else 6)
        np.testing.assert_array_equal(row_mask, expected)
    assert (~batch.mask).any() and batch.mask[:, 0].all()
    np.testing.assert_array_equal(batch.next_obs[..., 0], np.where(ends, -(t + 1), t + 1))


def test_sequence_buffer_needs_enough_transitions():
    buffer = SequenceReplayBuffer(40, (1,), seq_len=8)
    fill(buffer, 5, episode_length=100)
    assert not buffer.can_sample()
    with pytest.raises(ValueError, match="seq_len=8"):
        buffer.sample(2)


@pytest.mark.parametrize("cls", [ReplayBuffer, SequenceReplayBuffer])
def test_state_dict_round_trip_continues_identically(cls, tmp_path):
    kwargs = {"seq_len": 4} if cls is SequenceReplayBuffer else {}
    a = cls(30, (3,), np.float32, seed=5, **kwargs)
    fill(a, 47, episode_length=6)
    path = tmp_path / "replay.pt"
    torch.save(a.state_dict(), path)
    b = cls(30, (3,), np.float32, seed=99, **kwargs)
    b.load_state_dict(torch.load(path, weights_only=True))
    for buffer in (a, b):
        fill(buffer, 3, episode_length=6)
    batch_a, batch_b = a.sample(64), b.sample(64)
    for field in vars(batch_a):
        np.testing.assert_array_equal(getattr(batch_a, field), getattr(batch_b, field))
