"""The companion's command line: ``python -m companion <command>``.

Commands:
    train   train an agent and write a run directory (config, provenance, metrics, evaluations, checkpoint)
    eval    evaluate a run directory's checkpoint
    plot    learning curves of run directories, mean and 95% interval across seeds
    check   versions, device, budget, and one step of an ALE, a MinAtar and a popgym env

Examples:
    python -m companion train --algo dqn --env CartPole-v1 --seed 0
    python -m companion train --algo drqn --env CartPole-v1 --hide 1,3 --set seq_len=8 --out runs/drqn-masked
    python -m companion eval runs/dqn/CartPole-v1/seed0 --episodes 20
    python -m companion plot runs/dqn/CartPole-v1/seed* -o curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from companion.budget import BUDGETS, BudgetError

#: the ``--algo`` help (:data:`companion.agents.AGENTS` is not imported here: it loads torch, and ``--help``
#: should be quick)
ALGO_HELP = ("off-policy (replay): dqn, drqn, darqn, sadqn, sadqn-entity, nec; "
             "on-policy (rollouts): ppo, a2c, ppo-lstm, ppo-attn, ppo-memory, ppo-hmemory")


def _overrides(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def _default_out(algo: str, env_id: str, seed: int, hide: tuple[int, ...], flicker: float) -> Path:
    env = env_id.replace("/", "-")
    if hide:
        env += "-hide" + "_".join(str(i) for i in hide)
    if flicker:
        env += f"-flicker{flicker:g}"
    return Path("runs") / algo / env / f"seed{seed}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m companion", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an agent and write a run directory")
    train.add_argument("--algo", required=True, help=ALGO_HELP)
    train.add_argument("--env", required=True,
                       help="a gymnasium id: CartPole-v1, MinAtar/Breakout-v1, ALE/Pong-v5, ...")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, default=0, help="environment steps (default: by budget and env)")
    train.add_argument("--budget", choices=BUDGETS, default=None, help="default: $COMPANION_BUDGET, else book")
    train.add_argument("--out", type=Path, default=None, help="run directory (default: runs/ALGO/ENV/seedN)")
    train.add_argument("--hide", default="", help="observation dimensions to hide, e.g. 1,3 (CartPole velocities)")
    train.add_argument("--flicker", type=float, default=0.0, help="probability of blanking each observation")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting of the agent or the run (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--stop-at", type=int, default=None, help="stop with a checkpoint at this step (for tests)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="evaluate a run directory's checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--episodes", type=int, default=10)
    evaluate.add_argument("--epsilon", type=float, default=None, help="default: the run's eval epsilon")
    evaluate.add_argument("--seed", type=int, default=12345)

    plot = commands.add_parser("plot", help="learning curves, mean and 95%% interval across seeds")
    plot.add_argument("run_dirs", type=Path, nargs="+")
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"))
    plot.add_argument("--kind", default="eval",
                      help="eval, train, or update:NAME for a column of updates.csv (e.g. update:attention_entropy)")
    plot.add_argument("--title", default=None)

    commands.add_parser("check", help="check the installation: versions, device, one step of each env family")
    return parser


def _train(args: argparse.Namespace) -> int:
    from companion.train import build_config, train

    hide = tuple(int(i) for i in args.hide.split(",") if i.strip())
    out = args.out or _default_out(args.algo, args.env, args.seed, hide, args.flicker)
    if args.resume:
        result = train(None, None, out, resume=True, show_progress=not args.no_progress,  # type: ignore[arg-type]
                       stop_at=args.stop_at)
    else:
        run, agent = build_config(args.algo, args.env, seed=args.seed, budget=args.budget, total_steps=args.steps,
                                  overrides=_overrides(args.overrides), hide=hide, flicker=args.flicker)
        result = train(run, agent, out, show_progress=not args.no_progress, stop_at=args.stop_at)
    state = "stopped (resume with --resume)" if result.interrupted else "done"
    print(f"{state}: {result.steps} steps, {result.episodes} episodes, last evaluation {result.final_eval:.1f}; "
          f"run directory {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import numpy as np

    from companion.train import evaluate, load_agent, make_run_env

    agent, run, agent_config = load_agent(args.run_dir)
    epsilon = agent_config.eval_epsilon if args.epsilon is None else args.epsilon
    env = make_run_env(run, agent_config)
    returns = evaluate(agent, env, args.episodes, epsilon, seed=args.seed)
    print(f"{run.algo} {run.env_id}: mean return {np.mean(returns):.2f} ± {np.std(returns):.2f} (std) "
          f"over {len(returns)} episodes at epsilon {epsilon}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from companion.plots import group_runs, plot_curves

    ax = plot_curves(group_runs(args.run_dirs), kind=args.kind, title=args.title)
    ax.figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(args.output, dpi=120)
    plt.close(ax.figure)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            from companion.check import main as check_main

            return check_main()
        return {"train": _train, "eval": _eval, "plot": _plot}[args.command](args)
    except (BudgetError, ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input is a one-line error, not a traceback from deep inside torch.
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
