"""Prioritized replay (chapter 4): the trees against brute force, sampling against the priorities, the
importance-sampling weights by hand, the slots that must never be drawn, and PER runs of the agents."""

import dataclasses
import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from companion import buffers
from companion.agents import AGENTS, DQN, DRQN, DQNConfig, DRQNConfig
from companion.agents.base import replay_loss
from companion.buffers import (
    MinTree,
    PrioritizedReplayBuffer,
    PrioritizedSequenceReplayBuffer,
    ReplayBuffer,
    SequenceBatch,
    SequenceReplayBuffer,
    SumTree,
    TransitionBatch,
    window_td_error,
)
from companion.records import RunDir
from companion.train import build_config, train

CPU = torch.device("cpu")


def fill(buffer, n_steps, episode_length=1_000_000, start=0, states=False):
    """Transitions whose observation and reward are the step t at which they were added (and with
    ``states``, whose stored recurrent state is ``(t, -t)``)."""
    for t in range(start, start + n_steps):
        ends = (t + 1) % episode_length == 0
        buffer.add(np.full(buffer.obs_shape, t, np.float32), 0, float(t),
                   np.full(buffer.obs_shape, t + 1, np.float32), terminated=ends, truncated=False)
        if states:
            buffer.add_state(np.array([t, -t], np.float32))


def priorities(buffer):
    return buffer.sum_tree.values()


def chi2_quantile(df, z=3.09):
    """The chi-square quantile at the normal quantile z (3.09: 0.999), by Wilson and Hilferty (1931)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_module_examples():
    assert doctest.testmod(buffers).failed == 0


# -- the trees -------------------------------------------------------------------------------------
def check_tree(tree, op):
    t = tree.tree
    for i in range(1, tree.size):
        assert t[i] == op(t[2 * i], t[2 * i + 1]), i


@pytest.mark.parametrize("capacity", [1, 2, 5, 37, 1000])
def test_trees_equal_brute_force_after_random_updates(capacity):
    rng = np.random.default_rng(capacity)
    sums, mins = SumTree(capacity), MinTree(capacity)
    leaves, min_leaves = np.zeros(capacity), np.full(capacity, math.inf)  # unset: the identities
    for step in range(300):
        if step % 3 == 0:  # one leaf (how transitions enter)
            i, value = int(rng.integers(capacity)), float(rng.random() * 10.0 ** rng.integers(-3, 3))
            sums.update(i, value)
            mins.update(i, value)
            leaves[i] = min_leaves[i] = value
        else:  # a batch with repeats (how sampled priorities are set)
            idx = rng.integers(0, capacity, size=int(rng.integers(1, 40)))
            idx = np.unique(idx)  # a slot once per batch: its value is then defined
            values = rng.random(len(idx)) * 10.0 ** rng.integers(-3, 3, size=len(idx))
            values[rng.random(len(idx)) < 0.1] = 0.0
            sums.update(idx, values)
            mins.update(idx, values)
            leaves[idx] = min_leaves[idx] = values
        assert sums.total == pytest.approx(math.fsum(leaves), rel=1e-12, abs=1e-300)
        assert mins.min == min_leaves.min()
    np.testing.assert_array_equal(sums.values(), leaves)
    np.testing.assert_array_equal(sums[np.arange(capacity)], leaves)
    check_tree(sums, lambda a, b: a + b)
    check_tree(mins, min)
    assert sums.size >= capacity and sums.size & (sums.size - 1) == 0
    assert (sums.tree[sums.size + capacity:] == 0).all() and (mins.tree[mins.size + capacity:] == math.inf).all()


def test_many_updates_leave_no_drift_and_rebuild_changes_nothing():
    """Every node is recomputed from its children on each write, so after 10^5 leaf writes the sums are
    those of a tree built from scratch, bit for bit, and within rounding of the exact sum."""
    rng = np.random.default_rng(0)
    capacity = 3000
    tree = SumTree(capacity)
    leaves = np.zeros(capacity)
    for _ in range(3200):  # 102,400 leaf writes
        idx = rng.choice(capacity, size=32, replace=False)
        values = rng.random(32) ** 3 * 1e3
        tree.update(idx, values)
        leaves[idx] = values
    before = tree.tree.copy()
    tree.rebuild()
    np.testing.assert_array_equal(tree.tree, before)
    assert abs(tree.total - math.fsum(leaves)) <= 1e-12 * math.fsum(leaves)
    fresh = SumTree(capacity)
    fresh.load(leaves)
    np.testing.assert_array_equal(fresh.tree, before)


def test_find_follows_the_prefix_sums_and_skips_empty_leaves():
    tree = SumTree(6)
    tree.update(np.arange(6), [0.0, 1.0, 0.0, 0.0, 2.0, 0.0])  # intervals: leaf 1 [0, 1), leaf 4 [1, 3)
    mass = np.array([0.0, 0.5, 0.999, 1.0, 2.5, 2.999])
    np.testing.assert_array_equal(tree.find(mass), [1, 1, 1, 4, 4, 4])
    # At or past the total (or below 0): the last (first) positive leaf, never an empty one or padding.
    np.testing.assert_array_equal(tree.find([3.0, 3.0 + 1e-9, 1e9, -1.0]), [4, 4, 4, 1])
    rng = np.random.default_rng(1)
    found = tree.find(rng.random(10_000) * tree.total)
    assert set(found.tolist()) == {1, 4}
    with pytest.raises(ValueError, match="no positive value"):
        SumTree(3).find([0.0])
    one = SumTree(1)
    one.update(0, 2.0)
    assert one.total == 2.0 and one.find([1.5]).tolist() == [0]


# -- sampling ----------------------------------------------------------------------------------------
def test_sampled_frequencies_match_the_priorities():
    """Chi-square test at a fixed seed. Stratified draws vary less than independent ones, so the test
    is conservative; the same counts against uniform sampling fail it by far."""
    capacity, n = 50, 48  # 48 transitions, slots 0..47; the other slots are empty
    buffer = PrioritizedReplayBuffer(capacity, (1,), alpha=1.0, seed=0)
    fill(buffer, n)
    rng = np.random.default_rng(2)
    td = 0.5 + rng.random(n) * 5  # every expected count is large enough for the chi-square approximation
    buffer.update_priorities(np.arange(n), td)
    p = (td + buffer.eps) ** 1.0
    counts = np.zeros(capacity)
    for _ in range(400):
        batch = buffer.sample(32)
        np.add.at(counts, batch.indices, 1)
        np.testing.assert_array_equal(batch.obs[:, 0], batch.indices)  # slot i holds the transition of step i
    total = counts.sum()
    assert counts[n:].sum() == 0
    expected = total * p / p.sum()
    chi2 = ((counts[:n] - expected) ** 2 / expected).sum()
    assert chi2 < chi2_quantile(n - 1), chi2
    uniform = np.full(n, total / n)
    assert ((counts[:n] - uniform) ** 2 / uniform).sum() > 10 * chi2_quantile(n - 1)


def test_sampling_is_stratified_one_draw_per_segment():
    """B equal segments of the total mass, one uniform draw in each: with B equal priorities each
    segment is one slot, so a batch holds every slot once (independent draws would repeat some)."""
    buffer = PrioritizedReplayBuffer(40, (1,), seed=0)
    fill(buffer, 32)
    for _ in range(5):
        np.testing.assert_array_equal(buffer.sample(32).indices, np.arange(32))
    buffer.update_priorities(np.arange(32), np.where(np.arange(32) < 16, 3.0, 1.0))  # 16 heavy, 16 light
    share = 32 * 3.0 ** 0.6 / (3.0 ** 0.6 + 1)  # 21.1 of 32 draws expected in the heavy half
    for _ in range(5):
        heavy = (buffer.sample(32).indices < 16).sum()
        assert abs(heavy - share) < 1, heavy  # exact up to the one segment that straddles the halves


def test_alpha_zero_samples_uniformly_with_unit_weights():
    buffer = PrioritizedReplayBuffer(20, (1,), alpha=0.0, seed=0)
    fill(buffer, 25)
    buffer.update_priorities(np.arange(5), np.arange(5) * 100.0)
    batch = buffer.sample(64, beta=1.0)
    np.testing.assert_array_equal(batch.weights, np.ones(64, np.float32))
    assert np.allclose(priorities(buffer)[priorities(buffer) > 0], 1.0)


def test_importance_weights_on_a_hand_computed_case():
    """Four valid transitions with priorities 1, 2, 3, 4 (alpha 1, eps tiny): P = p / 10, N = 4.
    w_i = (N P_i)^-beta / max_j (N P_j)^-beta; at beta = 0.5 the smallest priority has weight 1 and
    priority 4 has weight (4/10 * 4)^-0.5 / (1/10 * 4)^-0.5 = (1/4)^0.5 = 0.5."""
    buffer = PrioritizedReplayBuffer(5, (1,), alpha=1.0, eps=1e-12, seed=0)
    fill(buffer, 4)
    buffer.update_priorities(np.arange(4), [1.0, 2.0, 3.0, 4.0])
    batch = buffer.sample(400, beta=0.5)
    p = np.array([1.0, 2.0, 3.0, 4.0])
    prob = p / p.sum()
    paper = (4 * prob) ** -0.5 / ((4 * prob) ** -0.5).max()
    np.testing.assert_allclose(batch.weights, paper[batch.indices], rtol=1e-6)
    np.testing.assert_allclose(paper, [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5])
    assert batch.weights.dtype == np.float32 and set(batch.indices.tolist()) == {0, 1, 2, 3}
    # beta = 0: no correction.
    np.testing.assert_array_equal(buffer.sample(8, beta=0.0).weights, np.ones(8, np.float32))
    # The normalisation is the buffer's smallest probability, not the batch's: slot 0 (p = 0.001) is
    # not in this batch, and still no weight reaches 1.
    buffer.update_priorities(np.array([0]), [0.001])
    batch = buffer.sample(4, beta=1.0)
    assert 0 not in batch.indices
    np.testing.assert_allclose(batch.weights, (0.001 / np.array([0.001, 2.0, 3.0, 4.0]))[batch.indices], rtol=1e-6)


def test_new_transitions_enter_at_the_max_priority():
    buffer = PrioritizedReplayBuffer(10, (1,), alpha=0.5, seed=0)
    fill(buffer, 3)
    np.testing.assert_array_equal(priorities(buffer)[:3], 1.0)  # nothing learned yet: 1
    buffer.update_priorities(np.array([0, 1]), [15.0, 0.01])
    top = (15.0 + buffer.eps) ** 0.5
    assert buffer.max_priority == top
    fill(buffer, 1, start=3)
    assert priorities(buffer)[3] == top
    buffer.update_priorities(np.array([0]), [0.0])  # the max is the largest ever given, as in the paper's code
    fill(buffer, 1, start=4)
    assert priorities(buffer)[4] == top and buffer.min_tree.min == (0.0 + buffer.eps) ** 0.5


def test_wraparound_priorities_follow_the_slots():
    buffer = PrioritizedReplayBuffer(7, (2,), alpha=1.0, seed=0)
    fill(buffer, 7)  # full: the write head (slot 0) is not a valid sample
    p = priorities(buffer)
    assert p[0] == 0 and (p[1:] == 1.0).all() and buffer.min_tree.min == 1.0
    buffer.update_priorities(np.arange(1, 7), np.arange(1, 7) / 10)  # slot i: step i, priority ~ i / 10
    fill(buffer, 3, start=7)  # steps 7, 8, 9 overwrite slots 0, 1, 2; the head moves to 3
    p = priorities(buffer)
    assert p[3] == 0  # the head
    np.testing.assert_array_equal(p[[0, 1, 2]], buffer.max_priority)  # new steps: the max priority
    np.testing.assert_allclose(p[4:], (np.arange(4, 7) / 10 + buffer.eps))  # untouched slots keep theirs
    for _ in range(20):
        batch = buffer.sample(32)
        t = batch.obs[:, 0]
        assert 3 not in batch.indices and set(t.astype(int)) <= set(range(4, 10))
        np.testing.assert_array_equal(t, np.where(batch.indices >= 4, batch.indices, batch.indices + 7))
        np.testing.assert_array_equal(batch.rewards, t)
        np.testing.assert_array_equal(batch.next_obs[:, 0], t + 1)


def test_slots_that_are_not_valid_samples_are_never_drawn():
    buffer = PrioritizedSequenceReplayBuffer(30, (1,), seq_len=5, alpha=1.0, seed=3)
    fill(buffer, 4)
    assert not buffer.can_sample() and buffer.sum_tree.total == 0
    with pytest.raises(ValueError, match="need at least 5"):
        buffer.sample(2)
    fill(buffer, 1, start=4)
    assert priorities(buffer).nonzero()[0].tolist() == [0]  # one window: steps 0..4
    fill(buffer, 60, episode_length=7, start=5)  # 65 steps in 30 slots: the head is slot 5
    p = priorities(buffer)
    invalid = [(5 - k) % 30 for k in range(5)]  # the head and the 4 starts whose windows would reach it
    assert (p[invalid] == 0).all() and (np.delete(p, invalid) > 0).all()
    buffer.update_priorities(np.arange(30), np.full(30, 1e3))  # a late update of invalid starts changes nothing
    assert (priorities(buffer)[invalid] == 0).all()
    for _ in range(20):
        batch = buffer.sample(64)
        assert not np.isin(batch.indices, invalid).any()
        t = batch.obs[..., 0]  # (B, T)
        np.testing.assert_array_equal(np.diff(t, axis=1), 1)  # consecutive, never across the write head
        assert t.min() >= 65 - 29 and t.max() <= 64
        np.testing.assert_array_equal(t[:, 0] % 30, batch.indices)  # the index is the window's start slot
        ends = (t + 1) % 7 == 0
        mask = np.cumsum(ends, axis=1) - ends == 0
        np.testing.assert_array_equal(batch.mask, mask)


def test_prioritized_windows_carry_their_stored_states_through_wraparound_and_checkpoints(tmp_path):
    """R2D2's stored state with prioritized windows: each window's ``states`` row is the one stored at its
    start slot (``batch.indices``), the states survive a state_dict round trip, and a checkpoint without
    states does not load into a buffer that keeps them (nor the reverse)."""
    a = PrioritizedSequenceReplayBuffer(13, (1,), seq_len=4, state_size=2, alpha=1.0, seed=3)
    fill(a, 50, episode_length=7, states=True)  # 50 steps in 13 slots
    a.update_priorities(a.sample(16).indices, np.random.default_rng(0).random(16) * 3)
    torch.save(a.state_dict(), tmp_path / "replay.pt")
    b = PrioritizedSequenceReplayBuffer(13, (1,), seq_len=4, state_size=2, alpha=1.0, seed=99)
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    np.testing.assert_array_equal(a.states, b.states)
    for buffer in (a, b):
        fill(buffer, 3, episode_length=7, start=50, states=True)
    batch_a, batch_b = a.sample(64, beta=0.7), b.sample(64, beta=0.7)
    for field in vars(batch_a):
        np.testing.assert_array_equal(getattr(batch_a, field), getattr(batch_b, field))
    t = batch_a.obs[:, 0, 0]  # each window's first step
    assert t.min() >= 53 - 12
    np.testing.assert_array_equal(batch_a.states, np.stack([t, -t], axis=1))
    np.testing.assert_array_equal(batch_a.states, a.states[batch_a.indices])
    plain = PrioritizedSequenceReplayBuffer(13, (1,), seq_len=4, alpha=1.0, seed=3)
    fill(plain, 20)
    assert plain.sample(4).states is None
    with pytest.raises(ValueError, match="disagree on stored recurrent states"):
        a.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="disagree on stored recurrent states"):
        plain.load_state_dict(a.state_dict())


def test_update_priorities_checks_its_input():
    buffer = PrioritizedReplayBuffer(10, (1,), seed=0)
    fill(buffer, 5)
    with pytest.raises(ValueError, match="one TD error per index"):
        buffer.update_priorities(np.arange(3), np.ones(2))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        buffer.update_priorities(np.array([-1]), np.ones(1))
    with pytest.raises(ValueError, match="not finite"):
        buffer.update_priorities(np.array([1]), [np.nan])
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedReplayBuffer(10, (1,), alpha=1.5)
    with pytest.raises(ValueError, match="eps"):
        PrioritizedReplayBuffer(10, (1,), eps=0.0)


@pytest.mark.parametrize("cls", [PrioritizedReplayBuffer, PrioritizedSequenceReplayBuffer])
def test_state_dict_round_trip_continues_identically(cls, tmp_path):
    kwargs = {"seq_len": 4} if cls is PrioritizedSequenceReplayBuffer else {}
    a = cls(37, (3,), np.float32, seed=5, **kwargs)
    fill(a, 50, episode_length=6)
    a.update_priorities(a.sample(16).indices, np.random.default_rng(0).random(16) * 3)
    torch.save(a.state_dict(), tmp_path / "replay.pt")
    b = cls(37, (3,), np.float32, seed=99, **kwargs)
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    np.testing.assert_array_equal(a.sum_tree.tree, b.sum_tree.tree)  # the nodes follow the leaves exactly
    np.testing.assert_array_equal(a.min_tree.tree, b.min_tree.tree)
    assert a.max_priority == b.max_priority > 1.0
    for buffer in (a, b):
        fill(buffer, 3, episode_length=6, start=50)
        batch = buffer.sample(64, beta=0.7)
        buffer.update_priorities(batch.indices, batch.rewards.reshape(64, -1)[:, 0] % 5)
    batch_a, batch_b = a.sample(64, beta=0.7), b.sample(64, beta=0.7)
    for field in vars(batch_a):
        np.testing.assert_array_equal(getattr(batch_a, field), getattr(batch_b, field))
    with pytest.raises(ValueError, match="no priorities"):
        b.load_state_dict((ReplayBuffer if not kwargs else SequenceReplayBuffer)(37, (3,), **kwargs).state_dict())


# -- the loss and the agents -------------------------------------------------------------------------
def test_window_td_error_mixes_max_and_mean_over_the_mask():
    td = np.array([[1.0, -3.0, 2.0, 100.0],
                   [-2.0, 2.0, 0.0, 0.0],
                   [5.0, 5.0, 5.0, 5.0]])
    mask = np.array([[True, True, True, False],  # the 100 lies past the episode's end
                     [True, True, False, False],
                     [False, False, False, False]])
    got = window_td_error(td, mask, eta=0.9)
    np.testing.assert_allclose(got, [0.9 * 3 + 0.1 * 2, 0.9 * 2 + 0.1 * 2, 0.0])
    np.testing.assert_allclose(window_td_error(td, mask, eta=0.0), [2.0, 2.0, 0.0])


def test_replay_loss_weighs_by_importance_and_hands_back_td_errors():
    q = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([2.0, 0.0, 3.5])
    losses = (q - target) ** 2  # 1, 4, 0.25
    config = DQNConfig()
    uniform = TransitionBatch(*([None] * 5))
    assert replay_loss(losses, q, target, uniform, config).item() == pytest.approx(5.25 / 3)
    assert uniform.td_errors is None
    batch = TransitionBatch(*([None] * 5), indices=np.arange(3), weights=np.array([1.0, 0.5, 0.2], np.float32))
    assert replay_loss(losses, q, target, batch, config).item() == pytest.approx((1 + 2 + 0.05) / 3)
    np.testing.assert_allclose(batch.td_errors, [1.0, 2.0, 0.5])
    # Windows: weights per window, TD errors mixed over the positions where the loss applies.
    q2 = torch.tensor([[1.0, 2.0, 9.0], [0.0, 0.0, 0.0]])
    target2 = torch.tensor([[0.0, 0.0, 0.0], [1.0, -3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    seq = SequenceBatch(*([None] * 6), indices=np.arange(2), weights=np.array([0.5, 1.0], np.float32))
    loss = replay_loss((q2 - target2) ** 2, q2, target2, seq, dataclasses.replace(config, priority_eta=0.5), mask)
    assert loss.item() == pytest.approx((0.5 * (1 + 4) + (1 + 9 + 0)) / 5)
    np.testing.assert_allclose(seq.td_errors, [0.5 * 2 + 0.5 * 1.5, 0.5 * 3 + 0.5 * 4 / 3])


def test_beta_anneals_linearly_to_one_over_the_run():
    agent = DQN((4,), 2, DQNConfig(hidden=(8,), prioritized=True, priority_beta=0.4), CPU)
    assert agent.beta == 0.4
    for step, beta in ((0, 0.4), (500, 0.7), (1000, 1.0), (5000, 1.0)):
        agent.set_step(step, 1000)
        assert agent.beta == pytest.approx(beta)
    agent.set_step(10)  # the run's length unknown: beta stays
    assert agent.beta == 1.0
    uniform = DQN((4,), 2, DQNConfig(hidden=(8,)), CPU)
    uniform.set_step(500, 1000)
    assert uniform.beta == 0.4  # only prioritized replay anneals it


@pytest.mark.parametrize("algo", ["dqn", "drqn", "darqn", "sadqn", "sadqn-entity"])
def test_every_q_agent_makes_the_buffer_its_config_asks_for(algo):
    cls = AGENTS[algo]
    obs_shape = (4, 10, 10) if algo in ("darqn", "sadqn-entity") else (4,)
    config = dataclasses.replace(cls.preset("MinAtar" if len(obs_shape) == 3 else "gym"), buffer_size=500,
                                 batch_size=4)
    sequence = algo in ("drqn", "darqn", "sadqn")
    uniform = cls(obs_shape, 3, config, CPU).make_buffer(np.dtype(np.float32), seed=0)
    assert type(uniform) is (SequenceReplayBuffer if sequence else ReplayBuffer)
    per_config = dataclasses.replace(config, prioritized=True, priority_alpha=0.7, priority_eps=1e-3)
    agent = cls(obs_shape, 3, per_config, CPU)
    buffer = agent.make_buffer(np.dtype(np.float32), seed=0)
    assert type(buffer) is (PrioritizedSequenceReplayBuffer if sequence else PrioritizedReplayBuffer)
    assert (buffer.alpha, buffer.eps) == (0.7, 1e-3)
    if sequence:
        assert buffer.seq_len == config.burn_in + config.seq_len
    rng = np.random.default_rng(0)
    for t in range(60):
        obs = rng.integers(0, 2, obs_shape).astype(np.float32)
        buffer.add(obs, int(rng.integers(3)), float(rng.random()), obs, False, t % 20 == 19)
    before = priorities(buffer).copy()
    info = agent.update(buffer)
    assert np.isfinite(info["loss"]) and info["beta"] == per_config.priority_beta
    changed = priorities(buffer) != before
    assert 1 <= changed.sum() <= 4 and (priorities(buffer)[changed] != 1.0).all()


def test_bad_priority_settings_raise_one_line_errors():
    for key, value, message in (("priority_alpha", 1.5, "priority_alpha must lie in"),
                                ("priority_beta", -0.1, "priority_beta must lie in"),
                                ("priority_eta", 2.0, "priority_eta must lie in"),
                                ("priority_eps", 0.0, "priority_eps must be > 0")):
        with pytest.raises(ValueError, match=message):
            DRQN((4,), 2, dataclasses.replace(DRQNConfig(), **{key: value}), CPU)
    proc = subprocess.run([sys.executable, "-m", "companion", "train", "--algo", "dqn", "--env", "CartPole-v1",
                           "--set", "prioritized=true", "--set", "priority_alpha=2", "--out", "/nonexistent/x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "priority_alpha" in proc.stderr
    with pytest.raises(ValueError, match="expected a bool"):
        build_config("dqn", "CartPole-v1", overrides={"prioritized": "maybe"})


# -- runs ------------------------------------------------------------------------------------------------
QUICK = dict(budget="quick", total_steps=1200, overrides={"eval_every": 600, "learning_starts": 200, "train_freq": 4,
                                                          "gradient_steps": 1, "prioritized": True})


def _run(tmp_path, name, algo, stop_at=None, **fields):
    run, agent = build_config(algo, "CartPole-v1", seed=4, **QUICK, **fields)
    return train(run, agent, tmp_path / name, show_progress=False, stop_at=stop_at)


@pytest.mark.parametrize(("algo", "extra"), [("dqn", []), ("drqn", ["--hide", "1,3"])])
def test_cli_trains_with_prioritized_replay(tmp_path, algo, extra):
    from companion.__main__ import main

    out = tmp_path / "run"
    assert main(["train", "--algo", algo, "--env", "CartPole-v1", "--budget", "quick", "--steps", "1200",
                 "--set", "prioritized=true", "--set", "learning_starts=200", "--out", str(out), "--no-progress",
                 *extra]) == 0
    run = RunDir(out)
    assert run.config()["agent"]["prioritized"] is True
    updates = run.updates()
    assert np.isfinite(updates["loss"]).all() and 0.4 < updates["beta"][-1] < 1.0
    replay = torch.load(out / "replay.pt", weights_only=True)
    p = replay["priorities"].numpy()
    assert replay["max_priority"] >= 1.0 and (p > 0).sum() >= 1000 and len(np.unique(p)) > 100
