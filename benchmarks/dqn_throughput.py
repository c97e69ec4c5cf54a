"""Companion DQN against Stable-Baselines3 DQN on CartPole-v1, with identical hyperparameters.

Run by hand, on an otherwise idle machine (needs the `bench` extra: `pip install -e ".[bench]"`):

    .venv/bin/python benchmarks/dqn_throughput.py [--steps 50000] [--seeds 0 1 2] [--set compile=true]

``--set KEY=VALUE`` (repeatable) changes a setting of the companion's run only, as ``train --set`` does (for example
``compile=true``: its networks compiled by ``torch.compile``, the compilation counted in its wall time); the JSON
written by ``--save`` records them.

Both use RL Baselines3 Zoo's tuned CartPole settings (lr 2.3e-3, batch 64, buffer 100k, learning
starts 1000, target copy every 10 steps, 128 updates every 256 steps, epsilon 1 -> 0.04 over 16% of
the run, MLP 256-256, Huber loss, gradient norm 10, Adam), one torch thread each. Double DQN is off
in ours, since SB3's DQN has none. It prints

1. env steps per second of each, their ratio, and the final evaluation return of each (10 greedy
   episodes);
2. the companion loop's overhead: its wall time against the time of its own env steps, actions,
   replay writes and updates, each measured alone.

Targets: steps/s ratio >= 1.5 at equal returns; loop overhead <= 10%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from companion.agents.base import linear_schedule  # noqa: E402
from companion.train import build_config, evaluate, train  # noqa: E402

SETTINGS = dict(lr=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1_000, target_update=10,
                train_freq=256, gradient_steps=128, eps_start=1.0, eps_end=0.04, eps_fraction=0.16, gamma=0.99,
                loss="huber", max_grad_norm=10.0, double_dqn=False, hidden=(256, 256))


def run_companion(steps: int, seed: int, out: Path, extra: dict[str, str]) -> tuple[float, float, object, float]:
    run, agent = build_config("dqn", "CartPole-v1", seed=seed, total_steps=steps, budget="book",
                              overrides={**SETTINGS, "eval_every": steps, "eval_episodes": 10, "threads": 1, **extra})
    start = time.perf_counter()
    result = train(run, agent, out, show_progress=False)
    wall = time.perf_counter() - start
    return steps / wall, result.final_eval, result, wall


def run_sb3(steps: int, seed: int) -> tuple[float, float]:
    import gymnasium as gym
    from stable_baselines3 import DQN
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    env = gym.make("CartPole-v1")
    model = DQN("MlpPolicy", env, learning_rate=SETTINGS["lr"], batch_size=64, buffer_size=100_000,
                learning_starts=1_000, gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
                exploration_fraction=0.16, exploration_initial_eps=1.0, exploration_final_eps=0.04,
                max_grad_norm=10.0, policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device="cpu", verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - start
    mean, _ = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=10, deterministic=True)
    return steps / wall, float(mean)


def loop_overhead(result, steps: int, wall: float) -> dict[str, float]:
    """Time the loop's parts alone, as many times as the loop did them, and compare with its wall time
    (less the time of its one evaluation, measured again alone)."""
    from companion.envs import make_env

    agent = result.agent
    config = agent.config
    env = make_env("CartPole-v1")
    buffer = agent.make_buffer(np.float32, seed=0)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    t_env = t_act = t_add = 0.0
    for step in range(steps):
        epsilon = linear_schedule(config.eps_start, config.eps_end, int(config.eps_fraction * steps), step)
        t0 = time.perf_counter()
        action, _ = agent.act(obs, None, epsilon, rng)
        t1 = time.perf_counter()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        t2 = time.perf_counter()
        buffer.add(obs, action, reward, next_obs, terminated, truncated)
        t3 = time.perf_counter()
        t_act, t_env, t_add = t_act + t1 - t0, t_env + t2 - t1, t_add + t3 - t2
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset(seed=step)
    n_updates = sum(config.gradient_steps for s in range(1, steps + 1)
                    if s > config.learning_starts and s % config.train_freq == 0)
    sample = 2_000
    start = time.perf_counter()
    for _ in range(sample):
        agent.update(buffer)
    t_update = (time.perf_counter() - start) / sample * n_updates
    start = time.perf_counter()
    evaluate(agent, make_env("CartPole-v1"), 10, 0.0, seed=0)
    loop_wall = wall - (time.perf_counter() - start)
    parts = t_env + t_act + t_add + t_update
    return {"loop_s": loop_wall, "env_s": t_env, "act_s": t_act, "replay_add_s": t_add, "update_s": t_update,
            "overhead_vs_env_and_updates": loop_wall / (t_env + t_update) - 1,
            "overhead_vs_all_parts": loop_wall / parts - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--save", type=Path, default=None, help="also write the figures and provenance as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the companion's run (repeatable), e.g. compile=true")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    torch.set_num_threads(1)
    print(f"CartPole-v1, {args.steps} steps, torch {torch.__version__}, 1 thread, "
          f"companion settings {extra or 'preset'}")
    rows = []
    for seed in args.seeds:
        out = args.out / f"dqn-seed{seed}-{int(time.time())}"
        ours_sps, ours_return, result, wall = run_companion(args.steps, seed, out, extra)
        sb3_sps, sb3_return = run_sb3(args.steps, seed)
        rows.append((ours_sps, sb3_sps, ours_return, sb3_return))
        print(f"seed {seed}: companion {ours_sps:7.1f} steps/s, return {ours_return:6.1f} | "
              f"SB3 {sb3_sps:7.1f} steps/s, return {sb3_return:6.1f} | ratio {ours_sps / sb3_sps:.2f}x")
    ours, sb3 = np.array(rows)[:, 0], np.array(rows)[:, 1]
    print(f"mean steps/s ratio (companion / SB3): {ours.mean() / sb3.mean():.2f}x (target >= 1.5x)")
    parts = loop_overhead(result, args.steps, wall)
    print("companion loop, last seed: " + ", ".join(f"{k} {v:.3g}" for k, v in parts.items()))
    print(f"loop overhead over its env steps and updates: {100 * parts['overhead_vs_env_and_updates']:.1f}% "
          f"(over all measured parts: {100 * parts['overhead_vs_all_parts']:.1f}%; target <= 10%)")
    if args.save:
        import json

        from companion.records import provenance

        record = {"steps": args.steps, "seeds": args.seeds, "companion_settings": extra,
                  "per_seed": [dict(zip(("companion_sps", "sb3_sps", "companion_return", "sb3_return"), r,
                                        strict=True)) for r in rows],
                  "ratio": float(ours.mean() / sb3.mean()), "loop": parts, **provenance()}
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(record, indent=2, default=float) + "\n")
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
