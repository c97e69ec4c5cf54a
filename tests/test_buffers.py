"""Replay buffers against ground truth: observation value = the time step at which it was seen."""

import numpy as np
import pytest
import torch

from companion.buffers import ReplayBuffer, SequenceReplayBuffer


def fill(buffer, n_steps, episode_length, truncate=False, states=False):
    """Episodes of ``episode_length`` steps; obs at step t is t, the last obs of an episode is -(t+1);
    with ``states``, the stored state of step t is :func:`state_at` ``(t)``."""
    for t in range(n_steps):
        ends = (t + 1) % episode_length == 0
        next_obs = np.full(buffer.obs_shape, -(t + 1) if ends else t + 1, np.float32)
        buffer.add(np.full(buffer.obs_shape, t, np.float32), t % 3, float(t), next_obs,
                   terminated=ends and not truncate, truncated=ends and truncate)
        if states:
            buffer.add_state(state_at(t))


def state_at(t):
    """A recurrent state (3 floats) that names the step it was stored at."""
    return np.array([t, -t, 0.5 * t], np.float32)


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


@pytest.mark.parametrize(("cls", "state_size"), [(ReplayBuffer, 0), (SequenceReplayBuffer, 0),
                                                  (SequenceReplayBuffer, 3)])
def test_state_dict_round_trip_continues_identically(cls, state_size, tmp_path):
    kwargs = {"seq_len": 4} if cls is SequenceReplayBuffer else {}
    if state_size:
        kwargs["state_size"] = state_size
    a = cls(30, (3,), np.float32, seed=5, **kwargs)
    fill(a, 47, episode_length=6, states=bool(state_size))
    assert ("states" in a.state_dict()) == bool(state_size)
    path = tmp_path / "replay.pt"
    torch.save(a.state_dict(), path)
    b = cls(30, (3,), np.float32, seed=99, **kwargs)
    b.load_state_dict(torch.load(path, weights_only=True))
    if state_size:
        np.testing.assert_array_equal(a.states, b.states)
    for buffer in (a, b):
        fill(buffer, 3, episode_length=6, states=bool(state_size))
    batch_a, batch_b = a.sample(64), b.sample(64)
    assert (getattr(batch_a, "states", None) is not None) == bool(state_size)
    for field in vars(batch_a):
        np.testing.assert_array_equal(getattr(batch_a, field), getattr(batch_b, field))


def test_windows_carry_the_state_stored_at_their_first_step_also_after_wraparound():
    """R2D2's stored state: add_state keeps the state for the transition just added, in its slot, and a
    window's ``states`` row is the one stored at its first step (never its last, nor a neighbour's)."""
    buffer = SequenceReplayBuffer(11, (2,), np.float32, seq_len=4, state_size=3, seed=0)
    fill(buffer, 40, episode_length=6, states=True)  # 40 adds into 11 slots: the ring wrapped 3 times
    for t in range(40 - 11, 40):
        np.testing.assert_array_equal(buffer.states[t % 11], state_at(t))
    batch = buffer.sample(300)
    first = batch.obs[:, 0, 0].astype(int)  # the step each window starts at
    assert batch.states.shape == (300, 3) and batch.states.dtype == np.float32
    assert set(first) == set(range(40 - 10, 40 - 3))  # every valid start, across the seam
    np.testing.assert_array_equal(batch.states, np.stack([state_at(t) for t in first]))
    plain = SequenceReplayBuffer(11, (2,), np.float32, seq_len=4, seed=0)
    fill(plain, 40, episode_length=6)
    assert plain.states is None and plain.sample(5).states is None


def test_stored_states_are_checked():
    buffer = SequenceReplayBuffer(10, (1,), seq_len=3, state_size=3)
    fill(buffer, 2, episode_length=5)
    with pytest.raises(ValueError, match="expected a state of size 3, got 4"):
        buffer.add_state(np.zeros(4, np.float32))
    buffer.add_state(torch.arange(3.0).reshape(1, 1, 3).numpy())  # any shape with 3 floats
    np.testing.assert_array_equal(buffer.states[1], [0, 1, 2])
    plain = SequenceReplayBuffer(10, (1,), seq_len=3)
    fill(plain, 2, episode_length=5)
    with pytest.raises(ValueError, match="keeps no states"):
        plain.add_state(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="state_size must be >= 0"):
        SequenceReplayBuffer(10, (1,), seq_len=3, state_size=-1)
    # A checkpoint and a buffer that disagree on stored states refuse to load, both ways, and so do sizes.
    with pytest.raises(ValueError, match="disagree on stored recurrent states"):
        buffer.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="disagree on stored recurrent states"):
        plain.load_state_dict(buffer.state_dict())
    with pytest.raises(ValueError, match=r"holds states \(10, 3\), this buffer \(10, 5\)"):
        SequenceReplayBuffer(10, (1,), seq_len=3, state_size=5).load_state_dict(buffer.state_dict())


def test_a_refused_checkpoint_leaves_the_buffer_as_it_was():
    """A checkpoint whose stored states have another size is refused before anything is overwritten: the
    buffer keeps its transitions, position and states (3ef02e2)."""
    buffer = SequenceReplayBuffer(10, (1,), seq_len=3, state_size=5, seed=0)
    fill(buffer, 4, episode_length=5)
    for t in range(4):
        buffer.states[t] = t + 1.0
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in buffer.state_dict().items()}
    other = SequenceReplayBuffer(10, (1,), seq_len=3, state_size=3, seed=1)
    fill(other, 7, episode_length=3, states=True)
    with pytest.raises(ValueError, match=r"holds states \(10, 3\), this buffer \(10, 5\)"):
        buffer.load_state_dict(other.state_dict())
    after = buffer.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
        else:
            assert after[key] == value, key
