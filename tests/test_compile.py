"""The ``compile`` run setting: a compiled update computes what the eager one does, checkpoints keep their keys, and
the agent that cannot compile says so. Networks are tiny (compiling is slow: seconds per graph); nothing is timed."""

import functools

import numpy as np
import pytest
import torch

from companion.agents import DQN, DRQN, NEC, DQNConfig, DRQNConfig, NECConfig
from companion.agents.base import COMPILE_PREFIX, strip_compile_prefix
from companion.train import build_config, train

CPU = torch.device("cpu")


@functools.cache
def _compiler_error() -> str:
    """Why ``torch.compile`` cannot run here ('' if it can): a C++ compiler is needed for the CPU's kernels."""
    try:
        torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
    except Exception as error:  # noqa: BLE001 (any failure means: no compiler here)
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return ""


def _needs_compiler() -> None:
    if _compiler_error():
        pytest.skip(f"torch.compile is unavailable here ({_compiler_error()})")


def _filled_buffer(agent, obs_shape: tuple[int, ...], steps: int = 64):
    buffer = agent.make_buffer(np.float32, seed=0)
    rng = np.random.default_rng(0)
    for t in range(steps):
        obs = rng.normal(size=obs_shape).astype(np.float32)
        buffer.add(obs, int(rng.integers(2)), float(rng.normal()), rng.normal(size=obs_shape).astype(np.float32),
                   False, t % 20 == 19)
    return buffer


def _eager_and_compiled(cls, config):
    agents = []
    for _ in range(2):
        torch.manual_seed(0)  # the same initial parameters
        agents.append(cls((4,), 2, config, CPU))
    agents[1].compile()
    return agents


def _check_same_loss_and_gradients(cls, config) -> None:
    eager, compiled = _eager_and_compiled(cls, config)
    batch = _filled_buffer(eager, (4,)).sample(config.batch_size)
    losses = []
    for agent in (eager, compiled):
        loss, _ = agent.loss(batch)
        agent.optimizer.zero_grad()
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for p_eager, p_compiled in zip(eager.q.parameters(), compiled.q.parameters(), strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-4, atol=1e-6)


def test_compiled_dqn_loss_and_gradients_equal_eager():
    _needs_compiler()
    _check_same_loss_and_gradients(DQN, DQNConfig(hidden=(8,), batch_size=8, buffer_size=100))


def test_compiled_drqn_loss_and_gradients_equal_eager():
    _needs_compiler()
    _check_same_loss_and_gradients(DRQN, DRQNConfig(hidden=(8,), lstm_size=8, seq_len=3, batch_size=4,
                                                    buffer_size=100))


def test_compiled_agent_checkpoints_keep_their_keys_and_load_into_an_eager_one():
    _needs_compiler()
    config = DQNConfig(hidden=(8,), batch_size=8, buffer_size=100)
    torch.manual_seed(0)
    agent = DQN((4,), 2, config, CPU)
    agent.compile()
    agent.update(_filled_buffer(agent, (4,)))  # compiles, and moves the parameters and Adam's moments
    state = agent.state_dict()
    assert not any(key.startswith(COMPILE_PREFIX) for key in state["q"])
    fresh = DQN((4,), 2, config, CPU)
    fresh.load_state_dict(state)
    for p, q in zip(agent.q.parameters(), fresh.q.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    wrapped = agent.q_fn.state_dict()  # a torch.compile wrapper's keys: _orig_mod.encoder...
    assert all(key.startswith(COMPILE_PREFIX) for key in wrapped)
    fresh.load_policy_state_dict(wrapped)
    assert set(strip_compile_prefix(wrapped)) == set(agent.q.state_dict())


def test_strip_compile_prefix_leaves_plain_state_dicts_alone():
    plain = {"weight": torch.ones(1)}
    assert strip_compile_prefix(plain) is plain
    assert list(strip_compile_prefix({f"{COMPILE_PREFIX}weight": torch.ones(1)})) == ["weight"]


def test_nec_refuses_compile_and_names_itself(tmp_path):
    agent = NEC((4,), 2, NECConfig(hidden=(8,), key_dim=4, dnd_size=100, n_step=2, learning_starts=2), CPU)
    with pytest.raises(ValueError, match="compile=true is not supported for nec"):
        agent.compile()
    run, config = build_config("nec", "CartPole-v1", budget="quick", overrides={"compile": "true"})
    assert run.compile is True
    with pytest.raises(ValueError, match="nec"):
        train(run, config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made
