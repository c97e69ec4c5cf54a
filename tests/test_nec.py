"""Neural Episodic Control (Pritzel et al. 2017): the DND read against a brute-force kernel average, its sparse
gradients, the tabular write and the LRU replacement, N-step returns by hand, the replay, checkpoints and exact
resume through the harness, the command line, bad settings, and a seeded learning check."""

import filecmp

import numpy as np
import pytest
import torch

from companion.__main__ import main
from companion.agents import AGENTS, NEC, NECConfig
from companion.agents.nec import DND, NStepReplay
from companion.records import RunDir
from companion.train import build_config, train

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# The DND's read, against an independent float64 computation
# --------------------------------------------------------------------------------------------------
def _filled(keys, values, capacity=None, p=50, delta=1e-3, alpha=0.1, tolerance=1e-6):
    """A DND whose first ``len(keys)`` slots hold ``keys`` and ``values``, set directly (no write)."""
    n, dim = keys.shape
    dnd = DND(capacity or n, dim, num_neighbors=p, delta=delta, alpha=alpha, tolerance=tolerance)
    with torch.no_grad():
        dnd.keys[:n] = torch.as_tensor(keys, dtype=torch.float32)
        dnd.values[:n] = torch.as_tensor(values, dtype=torch.float32)
        dnd.count.fill_(n)
    return dnd


def _kernel_average(keys, values, queries, p, delta):
    """Q(h) = sum_i w_i v_i over the p nearest keys by squared distance, w_i = k_i / sum_j k_j with
    k_i = 1 / (||h - h_i||^2 + delta): in float64, one query at a time, with a full sort."""
    keys, values = np.asarray(keys, np.float64), np.asarray(values, np.float64)
    out = []
    for h in np.asarray(queries, np.float64):
        squared = ((keys - h) ** 2).sum(axis=1)
        nearest = np.argsort(squared)[:p]
        kernel = 1.0 / (squared[nearest] + delta)
        out.append((kernel * values[nearest]).sum() / kernel.sum())
    return np.array(out)


def _problem(n=300, dim=6, batch=16, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n, dim)).astype(np.float32)
    values = rng.normal(scale=5.0, size=n).astype(np.float32)
    queries = rng.normal(size=(batch, dim)).astype(np.float32)
    m = min(4, batch)
    queries[:m] = keys[:m] + 0.01 * rng.normal(size=(m, dim))  # a few queries right next to a stored key
    return keys, values, queries


@pytest.mark.parametrize("delta", [1e-3, 0.5])
def test_read_is_the_kernel_average_over_the_p_nearest(delta):
    keys, values, queries = _problem()
    dnd = _filled(keys, values, capacity=400, p=50, delta=delta)  # 100 empty slots must be ignored
    got = dnd.lookup(torch.as_tensor(queries), touch=False).detach().numpy()
    np.testing.assert_allclose(got, _kernel_average(keys, values, queries, 50, delta), rtol=1e-4, atol=1e-4)
    # Not a smaller neighbourhood, and not all of memory: p matters.
    assert not np.allclose(got, _kernel_average(keys, values, queries, 300, delta), rtol=1e-3, atol=1e-3)
    assert not np.allclose(got, _kernel_average(keys, values, queries, 49, delta), rtol=1e-4, atol=1e-4)


def test_read_averages_all_entries_when_fewer_than_p_and_is_zero_when_empty():
    keys, values, queries = _problem(n=7)
    dnd = _filled(keys, values, capacity=20, p=50)
    got = dnd.lookup(torch.as_tensor(queries), touch=False).detach().numpy()
    np.testing.assert_allclose(got, _kernel_average(keys, values, queries, 7, 1e-3), rtol=1e-4, atol=1e-4)
    assert torch.equal(DND(5, 6).lookup(torch.ones(3, 6)), torch.zeros(3))
    # A query exactly at a stored key: the kernel is 1/delta there, finite, and that key's value dominates.
    at_key = dnd.lookup(torch.as_tensor(keys[2:3]), touch=False).detach()
    assert torch.isfinite(at_key).all() and abs(float(at_key) - values[2]) < 0.01 * (1 + abs(values[2]))


def test_gradients_are_sparse_over_the_p_neighbours_and_reach_the_query():
    keys, values, queries = _problem(n=120, batch=3)
    dnd = _filled(keys, values, p=10)
    h = torch.as_tensor(queries).requires_grad_(True)
    weights_of_q = torch.tensor([1.0, -2.0, 0.5])
    (dnd.lookup(h, touch=False) * weights_of_q).sum().backward()
    assert dnd.keys.grad.is_sparse and dnd.values.grad.is_sparse
    squared = ((keys[None] - queries[:, None]) ** 2).sum(-1)  # (3, 120)
    neighbours = set(np.argsort(squared, axis=1)[:, :10].ravel().tolist())
    key_grad, value_grad = dnd.keys.grad.coalesce(), dnd.values.grad.coalesce()
    assert set(key_grad.indices()[0].tolist()) == neighbours == set(value_grad.indices()[0].tolist())
    assert len(neighbours) < 120 and h.grad.abs().sum(1).gt(0).all()
    # The same numbers as dense autograd through the formula, in float64.
    k64 = torch.as_tensor(keys, dtype=torch.float64).requires_grad_(True)
    v64 = torch.as_tensor(values, dtype=torch.float64).requires_grad_(True)
    h64 = torch.as_tensor(queries, dtype=torch.float64).requires_grad_(True)
    idx = torch.as_tensor(np.argsort(squared, axis=1)[:, :10])
    kernel = 1.0 / ((h64[:, None] - k64[idx]).pow(2).sum(-1) + 1e-3)
    q = (kernel * v64[idx]).sum(1) / kernel.sum(1)
    (q * weights_of_q.double()).sum().backward()
    torch.testing.assert_close(dnd.keys.grad.to_dense().double(), k64.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(dnd.values.grad.to_dense().double(), v64.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Writes: the tabular step, appends, least-recently-used replacement
# --------------------------------------------------------------------------------------------------
def test_a_key_already_present_takes_the_tabular_step_a_new_one_is_appended():
    dnd = DND(10, 3, alpha=0.1, tolerance=1e-6)
    a, b = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.5]])
    assert dnd.write(a, torch.tensor([2.0])) == [0] and len(dnd) == 1
    assert dnd.write(a, torch.tensor([7.0])) == []  # the same key: Q_i <- Q_i + alpha (G - Q_i)
    assert len(dnd) == 1 and float(dnd.values.detach()[0]) == pytest.approx(2.0 + 0.1 * (7.0 - 2.0))
    assert dnd.write(b, torch.tensor([-1.0])) == [1]  # 0.25 away (squared): a new entry
    assert len(dnd) == 2 and float(dnd.values.detach()[1]) == -1.0 and torch.equal(dnd.keys[1], b[0])
    # Within the tolerance counts as present; in one call, later keys see the earlier ones.
    loose = DND(10, 3, alpha=0.5, tolerance=0.3)
    assert loose.write(torch.cat([a, b, a]), torch.tensor([2.0, 4.0, 0.0])) == [0]
    expected = 2.0 + 0.5 * (4.0 - 2.0)  # b, 0.25 away, updates a's slot ...
    expected += 0.5 * (0.0 - expected)  # ... and so does a again
    assert len(loose) == 1 and float(loose.values.detach()[0]) == pytest.approx(expected)


def test_a_repeated_large_key_is_matched_exactly_not_by_the_rounded_ranking():
    """Keys of norm ~1e3: the matmul expansion's rounding (~0.1 in squared distance) exceeds the tolerance,
    so the match is decided on exact distances among the nearest candidates."""
    rng = np.random.default_rng(1)
    base = torch.as_tensor(rng.normal(scale=300.0, size=(1, 16)), dtype=torch.float32)
    near = base + 0.03  # squared distance 0.0144 from base
    dnd = DND(10, 16, alpha=0.1, tolerance=1e-6)
    assert dnd.write(torch.cat([near, base]), torch.tensor([5.0, 1.0])) == [0, 1]
    assert int(dnd.nearest(base, 2)[1][0, 0]) == 0  # the rounded ranking puts `near` first here
    for _ in range(3):
        assert dnd.write(base, torch.tensor([11.0])) == []
    assert len(dnd) == 2 and float(dnd.values.detach()[0]) == 5.0
    assert float(dnd.values.detach()[1]) == pytest.approx(11.0 - 10.0 * 0.9**3)


def test_a_full_dnd_replaces_its_least_recently_used_slot():
    keys = torch.eye(4)[:3] * 10.0  # three well-separated keys
    dnd = DND(3, 4, num_neighbors=1)
    assert dnd.write(keys, torch.tensor([0.0, 1.0, 2.0])) == [0, 1, 2]
    dnd.lookup(keys[[0]] + 0.1)  # slot 0 is now the most recently used; slot 1 the least
    new = torch.full((1, 4), -10.0)
    assert dnd.write(new, torch.tensor([9.0])) == [1]
    assert torch.equal(dnd.keys[1], new[0]) and float(dnd.values.detach()[1]) == 9.0
    assert torch.equal(dnd.keys[0], keys[0]) and torch.equal(dnd.keys[2], keys[2])
    assert dnd.write(new * 2, torch.tensor([8.0])) == [2]  # then slot 2 (written before slot 0 was read)
    dnd.lookup(keys[[0]], touch=False)  # a read without touch changes nothing ...
    assert dnd.write(new * 3, torch.tensor([7.0])) == [0]  # ... so slot 0 goes next
    assert len(dnd) == 3


# --------------------------------------------------------------------------------------------------
# N-step returns and the replay
# --------------------------------------------------------------------------------------------------
class _Memory:
    """Records NStepReplay's writes; bootstraps with 10 * obs[0], so a test can see which obs was used."""

    def __init__(self) -> None:
        self.written: list[tuple[float, int, float]] = []
        self.bootstrapped: list[float] = []

    def bootstrap(self, obs):
        self.bootstrapped.append(float(obs[0]))
        return 10.0 * float(obs[0])

    def write(self, obs, actions, returns):
        self.written += [(float(o[0]), int(a), float(g)) for o, a, g in zip(obs, actions, returns, strict=True)]


def _replay(memory, n_step=3, gamma=0.5, capacity=100, **kwargs):
    return NStepReplay(capacity, (1,), np.float32, n_step=n_step, gamma=gamma, bootstrap=memory.bootstrap,
                       write=memory.write, seed=0, **kwargs)


def _step(replay, t, reward, terminated=False, truncated=False, action=None):
    """Transition t: obs t, next obs t + 1."""
    replay.add(np.array([t], np.float32), t % 2 if action is None else action, reward,
               np.array([t + 1], np.float32), terminated, truncated)


def test_n_step_returns_when_the_window_fills():
    memory = _Memory()
    replay = _replay(memory)  # N = 3, gamma = 0.5
    _step(replay, 0, 1.0)
    _step(replay, 1, 2.0)
    assert memory.written == [] and len(replay) == 0  # no return is known yet
    _step(replay, 2, 4.0)  # G_0 = 1 + .5 * 2 + .25 * 4 + .125 * 10 * obs_3
    assert memory.bootstrapped == [3.0]
    assert memory.written == [(0.0, 0, 1 + 1 + 1 + 0.125 * 30)]
    _step(replay, 3, 8.0)  # G_1 = 2 + .5 * 4 + .25 * 8 + .125 * 10 * obs_4
    assert memory.written[1] == (1.0, 1, 2 + 2 + 2 + 0.125 * 40) and len(replay) == 2


def test_termination_finishes_every_pending_step_without_a_bootstrap():
    memory = _Memory()
    replay = _replay(memory)
    for t, r in enumerate([1.0, 2.0, 4.0]):
        _step(replay, t, r)
    memory.bootstrapped.clear()
    _step(replay, 3, 8.0)  # step 1 finishes by the window
    _step(replay, 4, 16.0, terminated=True)
    assert memory.bootstrapped == [4.0]  # only the window's; none at the termination
    assert memory.written[2:] == [(2.0, 0, 4 + 0.5 * 8 + 0.25 * 16), (3.0, 1, 8 + 0.5 * 16), (4.0, 0, 16.0)]
    assert replay.pending_rewards == [] and len(replay) == 5
    _step(replay, 10, 1.0, terminated=True)  # a one-step episode: its return is its reward
    assert memory.written[-1] == (10.0, 0, 1.0)


def test_truncation_bootstraps_with_the_power_of_gamma_that_remains():
    memory = _Memory()
    replay = _replay(memory, n_step=4, gamma=0.9)
    for t, r in enumerate([1.0, 2.0]):
        _step(replay, t, r)
    _step(replay, 2, 3.0, truncated=True)  # the final obs is 3: bootstrap 30
    assert memory.bootstrapped == [3.0]
    expected = [(0.0, 0, 1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 30), (1.0, 1, 2 + 0.9 * 3 + 0.81 * 30),
                (2.0, 0, 3 + 0.9 * 30)]
    for got, want in zip(memory.written, expected, strict=True):
        assert got[:2] == want[:2] and got[2] == pytest.approx(want[2], rel=1e-6)
    # The window full and the time limit at the same step: the oldest step bootstraps with gamma^N.
    memory = _Memory()
    replay = _replay(memory, n_step=2, gamma=0.9)
    _step(replay, 0, 1.0)
    _step(replay, 1, 1.0, truncated=True)
    assert [g for _, _, g in memory.written] == pytest.approx([1 + 0.9 + 0.81 * 20, 1 + 0.9 * 20])


def test_rewards_are_clipped_in_the_returns_when_asked():
    memory = _Memory()
    replay = _replay(memory, n_step=5, gamma=1.0, reward_clip=1.0)
    _step(replay, 0, 5.0)
    _step(replay, 1, -3.0, terminated=True)
    assert [g for _, _, g in memory.written] == [0.0, -1.0]


def test_the_replay_is_a_ring_buffer_of_finished_steps():
    memory = _Memory()
    replay = _replay(memory, n_step=1, gamma=0.0, capacity=4)  # G_t = r_t
    for t in range(6):
        _step(replay, t, float(t), action=t % 3)
    assert len(replay) == 4 and replay.full and replay.pos == 2
    batch = replay.sample(400)
    assert set(batch.obs[:, 0].astype(int)) == {2, 3, 4, 5}  # the two oldest are overwritten
    np.testing.assert_array_equal(batch.returns, batch.obs[:, 0])
    np.testing.assert_array_equal(batch.actions, batch.obs[:, 0].astype(int) % 3)
    assert batch.obs.dtype == np.float32 and batch.returns.dtype == np.float32
    with pytest.raises(ValueError, match="empty replay"):
        _replay(_Memory()).sample(1)


def test_replay_state_round_trip_keeps_the_pending_window(tmp_path):
    memory_a, memory_b = _Memory(), _Memory()
    a, b = _replay(memory_a, n_step=4), _replay(memory_b, n_step=4)
    for t in range(6):
        _step(a, t, float(t) + 0.25)  # 3 steps finished, 3 pending
    assert len(a) == 3 and len(a.pending_rewards) == 3
    torch.save(a.state_dict(), tmp_path / "replay.pt")
    b.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))  # plain tensors and strings
    assert b.pending_rewards == a.pending_rewards and len(b) == 3
    for replay in (a, b):
        for t in range(6, 9):
            _step(replay, t, 1.5, terminated=t == 8)
    assert memory_a.written[3:] == memory_b.written
    np.testing.assert_array_equal(a.sample(50).obs, b.sample(50).obs)


# --------------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------------
def _agent(**overrides):
    config = NECConfig(**{**dict(hidden=(16,), key_dim=8, num_neighbors=5, n_step=3, dnd_size=40, batch_size=8,
                                 buffer_size=100, learning_starts=3), **overrides})
    return NEC((4,), 2, config, CPU)


def _feed(agent, buffer, steps, seed=0):
    """Random transitions from a seeded generator, in episodes of 7 steps (each ends by termination)."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        buffer.add(rng.normal(size=4).astype(np.float32), int(rng.integers(2)), float(rng.normal()),
                   rng.normal(size=4).astype(np.float32), bool(t % 7 == 6), False)


def test_q_values_read_each_actions_dnd_and_q_taken_its_own():
    agent = _agent()
    buffer = agent.make_buffer(np.float32, seed=0)
    _feed(agent, buffer, 30)
    assert len(agent.net.dnds[0]) + len(agent.net.dnds[1]) == len(buffer) > 0  # one entry per finished step
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(6, 4)), dtype=torch.float32)
    h = agent.net.embed(obs)
    q_all = agent.net.q_all(h, touch=False)
    for a in range(2):
        torch.testing.assert_close(q_all[:, a], agent.net.dnds[a].lookup(h, touch=False))
    actions = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.testing.assert_close(agent.net.q_taken(h, actions, touch=False), q_all.gather(1, actions[:, None])[:, 0])
    np.testing.assert_array_equal(agent.q_values(obs.numpy()), q_all.detach().numpy())


def test_writes_go_to_the_taken_actions_dnd_with_the_current_embedding():
    agent = _agent(n_step=1, gamma=0.0)  # G_t = r_t, written at once
    buffer = agent.make_buffer(np.float32, seed=0)
    obs = np.array([0.1, -0.2, 0.3, 0.4], np.float32)
    buffer.add(obs, 1, 2.5, obs, False, False)
    assert (len(agent.net.dnds[0]), len(agent.net.dnds[1])) == (0, 1)
    with torch.no_grad():
        torch.testing.assert_close(agent.net.dnds[1].keys[0], agent.net.embed(torch.as_tensor(obs)[None])[0])
    assert float(agent.net.dnds[1].values.detach()[0]) == 2.5
    assert agent.q_values(obs[None])[0].tolist() == [0.0, 2.5]  # an empty DND reads 0
    assert agent.act(obs, None, 0.0, np.random.default_rng(0))[0] == 1


def test_update_trains_the_embedding_and_only_the_neighbours_rows():
    agent = _agent()
    buffer = agent.make_buffer(np.float32, seed=0)
    _feed(agent, buffer, 30)
    before = {name: p.detach().clone() for name, p in agent.net.named_parameters()}
    rng_state = buffer.rng.bit_generator.state
    batch = buffer.sample(agent.config.batch_size)  # the batch the update will draw
    buffer.rng.bit_generator.state = rng_state
    with torch.no_grad():
        q = agent.net.q_taken(agent.net.embed(torch.as_tensor(batch.obs)), torch.as_tensor(batch.actions),
                              touch=False)
    info = agent.update(buffer)
    # The loss is the squared error of Q(s_t, a_t) against the N-step returns stored with them.
    assert info["loss"] == pytest.approx(float(((q - torch.as_tensor(batch.returns)) ** 2).mean()), rel=1e-5)
    assert np.isfinite(info["loss"]) and info["loss"] > 0
    moved = {name for name, p in agent.net.named_parameters() if not torch.equal(p, before[name])}
    assert {"encoder.net.1.weight", "key.weight", "dnds.0.keys", "dnds.0.values"} <= moved
    for a in range(2):
        dnd = agent.net.dnds[a]
        rows = (dnd.keys != before[f"dnds.{a}.keys"]).any(1).nonzero().squeeze(1)
        assert 0 < len(rows) <= agent.config.batch_size * agent.config.num_neighbors
        assert int(rows.max()) < len(dnd)  # never an empty slot
        untouched = torch.ones(dnd.capacity, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(dnd.values[untouched], before[f"dnds.{a}.values"][untouched])


def test_a_replaced_slot_loses_its_adam_moments():
    agent = _agent(dnd_size=6, n_step=1)
    buffer = agent.make_buffer(np.float32, seed=0)
    _feed(agent, buffer, 30)  # both DNDs full
    for _ in range(5):
        agent.update(buffer)
    dnd = agent.net.dnds[0]
    state = agent.dnd_optimizer.state[dnd.values]
    assert len(dnd) == dnd.capacity and state["exp_avg_sq"].ne(0).sum() >= 2
    slot = int(state["exp_avg_sq"].ne(0).nonzero()[0, 0])
    with torch.no_grad():
        dnd.last_used[slot] = -1  # make it the least recently used
    others = {name: s.clone() for name, s in state.items() if torch.is_tensor(s) and s.dim()}
    agent.write_memory(np.full((1, 4), 9.0, np.float32), np.array([0]), np.array([3.0], np.float32))
    assert float(dnd.values.detach()[slot]) == 3.0  # replaced ...
    for name, moments in others.items():  # ... with fresh moments; the other slots keep theirs
        assert float(state[name][slot]) == 0.0 and float(moments[slot]) != 0.0
        keep = torch.arange(dnd.capacity) != slot
        assert torch.equal(state[name][keep], moments[keep])


def test_evaluation_does_not_change_the_memory():
    agent = _agent()
    buffer = agent.make_buffer(np.float32, seed=0)
    _feed(agent, buffer, 20)
    before = {k: v.clone() for k, v in agent.net.state_dict().items()}
    rng = np.random.default_rng(0)
    for _ in range(10):
        agent.act(rng.normal(size=4).astype(np.float32), None, 0.0, rng)
    agent.q_values(rng.normal(size=(5, 4)).astype(np.float32))
    for k, v in agent.net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_round_trip_restores_memory_and_both_optimizers(tmp_path):
    agent = _agent(dnd_size=12)
    buffer = agent.make_buffer(np.float32, seed=0)
    _feed(agent, buffer, 40)  # more writes than slots: replacements happened
    for _ in range(4):
        agent.update(buffer)
    torch.save({"agent": agent.state_dict(), "replay": buffer.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    clone = _agent(dnd_size=12)
    clone.load_state_dict(saved["agent"])
    clone_buffer = clone.make_buffer(np.float32, seed=123)
    clone_buffer.load_state_dict(saved["replay"])
    obs = np.random.default_rng(5).normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_array_equal(clone.q_values(obs), agent.q_values(obs))
    for which in (agent, clone):  # the same future: writes, LRU, SparseAdam's and Adam's moments
        b = buffer if which is agent else clone_buffer
        _feed(which, b, 15, seed=9)
        for _ in range(3):
            which.update(b)
    for (name, p), q in zip(agent.net.state_dict().items(), clone.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("obs_shape", [(4, 10, 10), (4, 84, 84)])
def test_image_observations_stay_uint8_in_the_replay(obs_shape):
    agent = NEC(obs_shape, 3, NECConfig(key_dim=8, num_neighbors=5, n_step=2, dnd_size=20, batch_size=4,
                                        buffer_size=30, learning_starts=2), CPU)
    buffer = agent.make_buffer(np.uint8, seed=0)
    rng = np.random.default_rng(0)
    for t in range(6):
        frame = rng.integers(0, 2 if obs_shape[1] == 10 else 256, obs_shape, dtype=np.uint8)
        buffer.add(frame, t % 3, 1.0, frame, t == 5, False)
    assert buffer.obs.dtype == np.uint8 and len(buffer) == 6
    assert np.isfinite(agent.update(buffer)["loss"])
    assert agent.q_values(buffer.obs[:2]).shape == (2, 3)


def test_policy_network_holds_the_memory():
    agent = _agent()
    _feed(agent, agent.make_buffer(np.float32, seed=0), 20)
    keys = set(agent.policy_state_dict())
    assert {"dnds.0.keys", "dnds.0.values", "dnds.1.last_used", "dnds.1.count", "dnds.0.clock"} <= keys
    assert agent.num_parameters() == sum(p.numel() for m in (agent.net.encoder, agent.net.key) for p in m.parameters())
    agent.sync_target()  # nothing to do, and nothing breaks


def test_set_step_warms_up_and_anneals_both_learning_rates_by_the_same_factor():
    """The embedding's optimizer follows scheduled_lr (shared with the Q agents), SparseAdam's dnd_lr the same
    factor: the warm-up from learning_starts times the linear decay."""
    from companion.agents.base import scheduled_lr

    agent = _agent(lr=1e-3, dnd_lr=1e-2, learning_starts=10, lr_warmup=20, lr_end=1e-4, lr_decay_steps=100)
    c = agent.config
    for step, factor in ((0, 0.0), (10, 0.0), (15, 0.25 * 0.865), (30, 0.73), (60, 0.46), (500, 0.1)):
        assert scheduled_lr(c, step) == pytest.approx(1e-3 * factor), step
        agent.set_step(step)
        assert all(g["lr"] == pytest.approx(1e-3 * factor) for g in agent.optimizer.param_groups), step
        assert all(g["lr"] == pytest.approx(1e-2 * factor) for g in agent.dnd_optimizer.param_groups), step
    plain = _agent(lr=1e-3, dnd_lr=1e-2)
    plain.set_step(500)  # nothing scheduled: both stay
    assert plain.optimizer.param_groups[0]["lr"] == 1e-3 and plain.dnd_optimizer.param_groups[0]["lr"] == 1e-2


def test_set_step_warms_up_both_learning_rates_without_a_decay():
    """lr_warmup alone (no lr_end / lr_decay_steps) is a schedule too: both optimizers start from 0 at
    learning_starts and reach their rates lr_warmup steps later."""
    agent = _agent(lr=1e-3, dnd_lr=1e-2, learning_starts=10, lr_warmup=20)
    for step, factor in ((0, 0.0), (10, 0.0), (20, 0.5), (30, 1.0), (500, 1.0)):
        agent.set_step(step)
        assert all(g["lr"] == pytest.approx(1e-3 * factor) for g in agent.optimizer.param_groups), step
        assert all(g["lr"] == pytest.approx(1e-2 * factor) for g in agent.dnd_optimizer.param_groups), step


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("n_step", 0, "n_step must be >= 1"), ("num_neighbors", 0, "num_neighbors must be >= 1"),
     ("dnd_size", 0, "dnd_size must be >= 1"), ("key_dim", 0, "key_dim must be >= 1"),
     ("tabular_lr", 0.0, r"tabular_lr must lie in \(0, 1\]"), ("tabular_lr", 1.5, "tabular_lr"),
     ("kernel_delta", 0.0, "kernel_delta must be > 0"), ("key_tolerance", -1.0, "key_tolerance must be >= 0"),
     ("dnd_lr", 0.0, "dnd_lr must be > 0"), ("gamma", 1.5, "gamma must lie in"),
     ("learning_starts", 2, r"learning_starts \(2\) must be >= n_step \(3\)"), ("loss", "l1", "loss must be"),
     ("prioritized", True, "NEC replays its")],
)
def test_bad_settings_raise_clearly(field, value, message):
    with pytest.raises(ValueError, match=message):
        _agent(**{field: value})


def test_registry_presets_and_fit_to_steps():
    assert AGENTS["nec"] is NEC and NEC.loop == "off_policy"
    for family in ("gym", "popgym", "MinAtar", "ALE"):
        NEC.preset(family).validate()
    ale = NEC.preset("ALE")
    assert (ale.key_dim, ale.num_neighbors, ale.kernel_delta, ale.tabular_lr, ale.n_step) == (128, 50, 1e-3, 0.1, 100)
    with pytest.raises(ValueError, match="no NEC preset"):
        NEC.preset("mujoco")
    _, quick = build_config("nec", "CartPole-v1", budget="quick")
    _, book = build_config("nec", "CartPole-v1", budget="book")
    assert quick.dnd_size <= 3_000 and quick.buffer_size <= 3_000 and quick.learning_starts >= quick.n_step
    assert (quick.lr, quick.n_step, quick.num_neighbors) == (book.lr, book.n_step, book.num_neighbors)
    _, long_n = build_config("nec", "CartPole-v1", budget="quick", overrides={"n_step": 2_000})
    assert long_n.learning_starts == 2_000  # never before the first N-step return can be known


# --------------------------------------------------------------------------------------------------
# Through the harness and the command line
# --------------------------------------------------------------------------------------------------
# A memory of 150 slots per action fills within the run: replacements (and Adam-moment resets) are exercised.
QUICK = dict(budget="quick", total_steps=1200, overrides={"eval_every": 600, "learning_starts": 200, "dnd_size": 150})


def _run(tmp_path, name, stop_at=None, **overrides):
    run, agent = build_config("nec", "CartPole-v1", seed=3, **{**QUICK, "overrides": {**QUICK["overrides"],
                                                                                       **overrides}})
    return train(run, agent, tmp_path / name, show_progress=False, stop_at=stop_at)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = _run(tmp_path, "whole")
    assert all(len(dnd) == 150 for dnd in whole.agent.net.dnds)  # full: the LRU replaced slots
    part = _run(tmp_path, "part", stop_at=500)
    assert part.interrupted and 500 <= part.steps < 1200
    resumed = train(None, None, tmp_path / "part", resume=True, show_progress=False)
    assert resumed.steps == 1200 and not resumed.interrupted
    for name in ("metrics.csv", "eval.csv", "updates.csv", "policy.pt"):
        assert filecmp.cmp(tmp_path / "whole" / name, tmp_path / "part" / name, shallow=False), name
    assert RunDir(tmp_path / "part").meta()["resumed"] == 1


def test_the_evaluation_cadence_does_not_change_training(tmp_path):
    _run(tmp_path, "a")
    _run(tmp_path, "b", eval_every=300)
    for name in ("metrics.csv", "updates.csv"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name


def test_cli_train_eval_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--algo", "nec", "--env", "CartPole-v1", "--budget", "quick", "--out", out, "--no-progress",
            "--steps", "600"]
    assert main([*base, "--stop-at", "250"]) == 0
    assert "stopped (resume with --resume)" in capsys.readouterr().out
    assert main(["train", "--algo", "nec", "--env", "CartPole-v1", "--out", out, "--no-progress", "--resume"]) == 0
    assert "done: 600 steps" in capsys.readouterr().out
    assert main(["eval", out, "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out
    assert main(["plot", out, "-o", str(tmp_path / "curve.png")]) == 0


@pytest.mark.slow
def test_nec_beats_random_on_cartpole_within_3000_steps(tmp_path):
    # Seeded check with an honest margin: a random policy scores about 22. Measured (the gym preset at the
    # quick budget: 3,000 steps, learning from step 750), final evaluations over 10 episodes of seeds 0-4:
    # 171, 478, 119, 167, 217; the threshold sits below all five, so a change of seeds alone does not fail it.
    run, agent = build_config("nec", "CartPole-v1", seed=0, budget="quick", overrides={"eval_episodes": 10})
    result = train(run, agent, tmp_path / "learn", show_progress=False)
    assert result.final_eval >= 60
