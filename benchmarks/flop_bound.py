"""Every agent's update against the arithmetic it does: FLOPs counted, the machine's matmul rate measured, ms timed.

Run by hand, on a machine as idle as you can get:
``.venv/bin/python benchmarks/flop_bound.py [--compile] [--only darqn,sadqn] [--repeats 3] [--save]``;
``--save`` writes ``results/benchmarks/flop_bound.json`` (``flop_bound_compiled.json`` with ``--compile``) with its
provenance. Torch runs on one thread (``--threads``). The agents are those of ``update_cost.py`` (its ``CASES``), plus
NEC and the actor-critic family on the tasks their chapters train them on.

What "one update" is:

- Q-learning agents and NEC: ``agent.update(buffer)``: sample a batch from a replay filled by a random policy in the
  real env, forward (online and target), backward, gradient clipping, optimizer step.
- Actor-critic agents (PPO, A2C and the memory torsos): **one minibatch gradient step**,
  ``agent.minibatch_step(batch)`` on the first minibatch of a rollout collected in the real env: forward over the
  minibatch (a recurrent or memory torso re-reads its sequences), PPO's loss, backward, clipping, Adam. A whole PPO
  update is ``per_update`` of these (``n_epochs`` times the minibatches per epoch; 1 for the others).

Columns (one row per agent and task):

- ``mflop``: the update's floating-point operations in millions, counted by ``torch.utils.flop_counter``'s
  ``FlopCounterMode`` (matmuls, convolutions and attention, with ``EXTRA_FORMULAS`` for the ops it misses; 2 per
  multiply-add, backward included; elementwise ops, softmax, the optimizer and data movement are not counted, so the
  bound below is a floor).
- ``gflops``: the rate of a 512x512 float32 matmul on this thread, measured in the same process, before each
  agent's timing and again after it (the best of those samples: a busy machine only slows it).
- ``bound_ms``: ``mflop / gflops``, the time the update would take if it ran every counted FLOP at the matmul rate.
- ``ms``: measured milliseconds per update, the best of ``--repeats`` medians (``torch.utils.benchmark``); with
  ``--compile``, ``ms_compiled`` for the agent with ``compile=true`` (its networks compiled by ``torch.compile``) and
  ``compile_s``, the wall time of its first update (the compilation).
- ``ratio``: how many times slower than the arithmetic bound: each timing divided by the bound at the rate measured
  around it (the mean of the samples just before and after), the smallest of the repeats (``ratio_compiled``
  likewise). On an idle machine it is ``ms / bound_ms``; on a shared one the pairing keeps it. Small
  matrices (batch 32, LSTM 128, 64 locations of 32) keep it well above 1: per op, the fixed cost of dispatch and
  memory traffic is as large as the multiply.
- ``ms_at_best_rate``: ``ratio * bound_ms``, the update's time had the machine run at its best measured rate all
  along (``ms_compiled_at_best_rate`` likewise): on a shared machine, the figure to compare across runs.
- ``parameters``: trainable parameters of the acting network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from update_cost import CASES as Q_CASES  # noqa: E402

from companion.agents import AGENTS  # noqa: E402
from companion.agents.actor_critic import ActorCriticAgent  # noqa: E402
from companion.buffers import Rollout  # noqa: E402
from companion.cost import time_call  # noqa: E402
from companion.loops.on_policy import make_vector_env  # noqa: E402
from companion.records import save_benchmark  # noqa: E402
from companion.train import build_config, make_run_env  # noqa: E402

#: (label, algo, env id, overrides): update_cost.py's agents, NEC (chapter 4), and the actor-critic agents with the
#: settings of chapters 3 (CartPole with its velocities hidden, experiments/ch3.sh), 4 (CueRecall, ch4_delay.sh) and
#: 5 (ch5.sh)
CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    *Q_CASES,
    ("NEC", "nec", "CartPole-v1", {}),
    ("PPO", "ppo", "CartPole-v1", {}),
    ("PPO-LSTM", "ppo-lstm", "CartPole-v1", {"hide": (1, 3)}),
    ("PPO-attn", "ppo-attn", "CartPole-v1", {"hide": (1, 3)}),
    ("PPO, 4 stacked", "ppo", "CartPole-v1", {"hide": (1, 3), "frame_stack": 4}),
    ("PPO-attn critic", "ppo-attn", "CartPole-v1", {"hide": (1, 3), "attend": "critic"}),
    ("PPO-memory", "ppo-memory", "CueRecall-D16-v0",
     {"memory": 1024, "n_steps": 18, "batch_size": 144, "n_epochs": 4}),
    ("PPO-hmemory", "ppo-hmemory", "CueRecall-D64-v0",
     {"memory": 1024, "n_steps": 66, "batch_size": 528, "n_epochs": 4}),
]
MATMUL = 512  # the rate's matmul: (512, 512) @ (512, 512), float32


def matmul_gflops(seconds: float = 0.3) -> float:
    """GFLOP/s of one ``MATMUL``-square float32 matmul on this thread (median of ``torch.utils.benchmark``)."""
    a, b = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    return 2 * MATMUL**3 / time_call(lambda: a @ b, min_run_time=seconds) / 1e9


def _rollout(agent: ActorCriticAgent, env_fn: Any) -> Rollout:
    """One rollout of ``n_steps`` x ``n_envs`` steps by the agent's policy in the real envs, with GAE."""
    c = agent.config
    envs = make_vector_env(env_fn, c.n_envs)
    space = envs.single_observation_space
    obs_dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
    obs, _ = envs.reset(seed=list(range(c.n_envs)))
    state, starts = agent.rollout_state(c.n_envs), np.ones(c.n_envs, dtype=bool)
    rollout = Rollout.empty(c.n_steps, c.n_envs, space.shape, obs_dtype, agent.device)
    prefix = agent.history_prefix
    rollout.initial_state = state
    rollout.prefix_obs = torch.zeros((prefix, c.n_envs, *space.shape), dtype=obs_dtype)
    rollout.prefix_starts = torch.ones((prefix, c.n_envs), dtype=torch.bool)
    for t in range(c.n_steps):
        action, log_prob, value, state = agent.step(obs, state)
        next_obs, reward, terminated, truncated, _ = envs.step(action)
        done = terminated | truncated
        rollout.obs[t] = torch.as_tensor(obs)
        rollout.actions[t] = torch.as_tensor(action)
        rollout.log_probs[t], rollout.values[t] = log_prob, value
        rollout.rewards[t] = torch.as_tensor(reward, dtype=torch.float32)
        rollout.dones[t] = torch.as_tensor(done)
        rollout.episode_starts[t] = torch.as_tensor(starts)
        if done.any():
            next_obs, _ = envs.reset(options={"reset_mask": done.copy()})
            state = agent.reset_state(state, done)
        obs, starts = next_obs, done
    rollout.next_value = agent.value(obs, state)
    rollout.compute_advantages(c.gamma, c.gae_lambda)
    envs.close()
    return rollout


def build(algo: str, env_id: str, overrides: dict[str, Any], compiled: bool) -> tuple[Any, Any, int]:
    """An agent (compiled or not), and a zero-argument call that runs one update (see the module docstring), and
    how many such calls make one whole update (1, or PPO's epochs times minibatches)."""
    torch.manual_seed(0)
    if compiled:  # a fresh compile cache: no agent's graphs count against the next one's recompile limit
        torch._dynamo.reset()
    run, config = build_config(algo, env_id, overrides=overrides if algo.startswith(("ppo", "a2c"))
                               else {**overrides, "buffer_size": 2_000})
    env = make_run_env(run, config)
    agent = AGENTS[algo](env.observation_space.shape, int(env.action_space.n), config, torch.device("cpu"))
    if compiled:
        agent.compile()
    if isinstance(agent, ActorCriticAgent):
        rollout = _rollout(agent, lambda: make_run_env(run, config))
        batches = list(agent.minibatches(rollout))
        batch = batches[0]
        return agent, lambda: agent.minibatch_step(batch), config.n_epochs * len(batches)
    buffer = agent.make_buffer(env.observation_space.dtype, seed=0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(1_000):
        action = int(rng.integers(env.action_space.n))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    return agent, lambda: agent.update(buffer), 1


def _lstm_layer_flops(input_shape: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None,
                      **kwargs: Any) -> int:
    """oneDNN's fused LSTM layer (``nn.LSTM`` on the CPU), which ``FlopCounterMode`` does not count: input
    ``(T, B, d_in)``, weights ``(4H, d_in)`` and ``(4H, H)``: ``2 T B 4H (d_in + H)``, the two gate matmuls."""
    steps, batch = input_shape[0], input_shape[1]
    return 2 * steps * batch * w_ih[0] * (w_ih[1] + w_hh[1])


def _lstm_layer_backward_flops(*args: Any, **kwargs: Any) -> int:
    """Its backward: the gradients of the input and of both weights, twice the forward's matmuls."""
    return 2 * _lstm_layer_flops(*args, **kwargs)


def _sdpa_cpu_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """The CPU's flash attention, counted as ``FlopCounterMode`` counts the GPU's (``QK^T`` and ``PV``)."""
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                             **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: ops FlopCounterMode has no formula for: nn.LSTM's fused layer on the CPU (nn.LSTMCell is counted through its
#: matmuls), and the CPU's flash attention (SA-DQN's and the memory torsos' scaled dot-product attention)
EXTRA_FORMULAS = {torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops,
                  torch.ops.aten.mkldnn_rnn_layer_backward: _lstm_layer_backward_flops,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
                  torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}


def count_flops(step: Any) -> int:
    """FLOPs of one call of ``step``, by ``FlopCounterMode`` (with :data:`EXTRA_FORMULAS`)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        step()
    return int(counter.get_total_flops())


def measure(algo: str, env_id: str, overrides: dict[str, Any], *, compiled: bool, repeats: int,
            min_run_time: float, rates: list[float]) -> dict[str, Any]:
    """Time one agent's update (eager, or compiled after timing its first call), sampling the matmul rate into
    ``rates`` before the first repeat and after each; returns the row's measured fields, among them ``ms_at_rate``:
    each repeat's milliseconds with the mean rate around it."""
    agent, step, per_update = build(algo, env_id, overrides, compiled)
    row: dict[str, Any] = {"parameters": agent.num_parameters(), "per_update": per_update}
    if compiled:
        start = time.perf_counter()
        step()  # compiles (the grad-mode and no-grad graphs)
        row["compile_s"] = round(time.perf_counter() - start, 1)
    else:
        row["flops"] = count_flops(step)
    times, local = [], [matmul_gflops()]
    for _ in range(repeats):
        times.append(time_call(step, min_run_time=min_run_time))
        local.append(matmul_gflops())
    rates.extend(local)
    row["ms"] = 1e3 * min(times)
    # each timing against the rate measured just before and after it: on a shared machine both slow down together
    row["ms_at_rate"] = [(1e3 * t, (before + after) / 2) for t, before, after in
                        zip(times, local[:-1], local[1:], strict=True)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="medians per agent; the best is kept")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per median")
    parser.add_argument("--compile", action="store_true", help="also time each agent with compile=true (slow: "
                        "seconds to minutes of compiling per agent)")
    parser.add_argument("--only", default="", help="comma-separated algos to run (default: all)")
    parser.add_argument("--save", action="store_true", help="write the table to results/benchmarks/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); one update = a replay update, or one "
          f"PPO minibatch step")
    print(f"{'env':22s} {'agent':15s} {'params':>9s} {'MFLOP':>8s} {'GFLOP/s':>8s} {'bound ms':>8s} {'ms':>8s} "
          f"{'ratio':>6s} {'ms@best':>8s}"
          + (f" {'compiled':>8s} {'ratio':>6s} {'ms@best':>8s} {'compile s':>9s}" if args.compile else ""))
    rows, saved = [], None
    for label, algo, env_id, overrides in CASES:
        if only and algo not in only:
            continue
        rates: list[float] = []
        row: dict[str, Any] = {"agent": label, "algo": algo, "env_id": env_id, "overrides": overrides,
                               **measure(algo, env_id, overrides, compiled=False, repeats=args.repeats,
                                         min_run_time=args.min_run_time, rates=rates)}
        compiled: dict[str, Any] = {}
        if args.compile and algo != "nec":  # NEC refuses compile=true (its update is DND lookups)
            try:
                compiled = measure(algo, env_id, overrides, compiled=True, repeats=args.repeats,
                                   min_run_time=args.min_run_time, rates=rates)
                row.update(ms_compiled=compiled["ms"], compile_s=compiled["compile_s"])
            except Exception as error:  # noqa: BLE001 (recorded in the row: one agent's failure is a result too)
                row["compile_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                print(f"{label}: compile failed: {row['compile_error']}", flush=True)
        row["gflops"] = max(rates)
        row["mflop"] = row.pop("flops") / 1e6
        row["bound_ms"] = row["mflop"] / row["gflops"]
        row["ratio"] = min(ms * rate / row["mflop"] for ms, rate in row.pop("ms_at_rate"))
        row["ms_at_best_rate"] = row["ratio"] * row["bound_ms"]
        line = (f"{env_id:22s} {label:15s} {row['parameters']:>9,} {row['mflop']:8.1f} {row['gflops']:8.1f} "
                f"{row['bound_ms']:8.2f} {row['ms']:8.2f} {row['ratio']:6.1f} {row['ms_at_best_rate']:8.2f}")
        if "ms_compiled" in row:
            row["ratio_compiled"] = min(ms * rate / row["mflop"] for ms, rate in compiled["ms_at_rate"])
            row["ms_compiled_at_best_rate"] = row["ratio_compiled"] * row["bound_ms"]
            line += (f" {row['ms_compiled']:8.2f} {row['ratio_compiled']:6.1f} {row['ms_compiled_at_best_rate']:8.2f} "
                     f"{row['compile_s']:9.1f}")
        print(line, flush=True)
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        if args.save:  # after every agent: an interrupted run keeps what it measured
            saved = save_benchmark("flop_bound_compiled" if args.compile else "flop_bound", rows, torch.device("cpu"),
                                   Path(__file__).resolve().parents[1] / "results" / "benchmarks", matmul=MATMUL,
                                   one_update="replay agents: agent.update; actor-critic: one minibatch step")
    if args.save:
        print("saved", saved)


if __name__ == "__main__":
    main()
