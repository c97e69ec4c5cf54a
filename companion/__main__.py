"""The companion's command line: ``python -m companion <command>``.

Commands:
    train   train an agent and write a run directory (config, provenance, metrics, evaluations, checkpoint)
    eval    evaluate a run directory's checkpoint
    plot    learning curves of run directories, mean and 95% interval across seeds
    sweep   run an experiment grid (a TOML file of train commands) locally, on Ray or on Slurm; resumable
    check   versions, device, budget, and one step of an ALE, a MinAtar and a popgym env

Examples:
    python -m companion train --algo dqn --env CartPole-v1 --seed 0
    python -m companion train --algo drqn --env CartPole-v1 --hide 1,3 --set seq_len=8 --out runs/drqn-masked
    python -m companion train --resume --out runs/drqn-masked
    python -m companion eval runs/dqn/CartPole-v1/seed0 --episodes 20
    python -m companion plot runs/dqn/CartPole-v1/seed* -o curves.png
    python -m companion sweep experiments/ch2.toml --dry-run      # the grid's train commands
    python -m companion sweep experiments/ch2.toml --jobs 2       # run what is not done; --status: where it stands
    python -m companion sweep experiments/ch2.toml --backend ray --ray-address auto
    python -m companion sweep experiments/ch2.toml --backend submitit --slurm-partition cpu --timeout-min 240
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from companion.budget import BUDGETS, BudgetError

if TYPE_CHECKING:
    from companion.sweep import Grid, Outcome

#: the ``sweep --backend`` choices (:data:`companion.sweep.BACKENDS`; the sweep's module is imported when one runs)
SWEEP_BACKENDS = ("local", "ray", "submitit")

#: the ``--algo`` help (:data:`companion.agents.AGENTS` is not imported here: it loads torch, and ``--help``
#: should be quick)
ALGO_HELP = ("off-policy (replay): dqn, drqn, darqn, sadqn, sadqn-entity, nec; "
             "on-policy (rollouts): ppo, a2c, ppo-lstm, ppo-attn, ppo-memory, ppo-hmemory")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line: ``python -m companion train: error: argument --steps: ...``
    (exit status 2), and where to find the usage instead of the usage itself."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str, least: int) -> int:
    """A count typed on the command line (``1000``, ``1_000``, ``1e3``), at least ``least``."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (number.is_integer() and number >= least):
        raise argparse.ArgumentTypeError(f"expected {'a positive integer' if least else 'an integer of 0 or more'}, "
                                         f"got {text!r}")
    return int(number)


def _positive(text: str) -> int:
    return _integer(text, least=1)


def _not_negative(text: str) -> int:
    return _integer(text, least=0)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def _indices(text: str) -> tuple[int, ...]:
    """``"1,3"`` -> ``(1, 3)``: observation dimensions."""
    try:
        return tuple(_not_negative(i) for i in text.split(",") if i.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected observation indices like 1,3, got {text!r}") from None


def _overrides(pairs: list[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


def _default_out(algo: str, env_id: str, seed: int, hide: tuple[int, ...], flicker: float) -> Path:
    from companion.sweep import env_dir_name  # a sweep's grid names env folders the same way

    return Path("runs") / algo / env_dir_name(env_id, hide, flicker) / f"seed{seed}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m companion", description=__doc__.splitlines()[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Defaults of None: with --resume, what was not typed is taken from the run's config.json, and what was
    # typed must agree with it.
    train = commands.add_parser("train", help="train an agent and write a run directory")
    train.add_argument("--algo", help=f"required unless --resume. {ALGO_HELP}")
    train.add_argument("--env", help="required unless --resume. A gymnasium id: CartPole-v1, MinAtar/Breakout-v1, "
                                     "ALE/Pong-v5, ...")
    train.add_argument("--seed", type=_not_negative, default=None, help="default: 0")
    train.add_argument("--steps", type=_positive, default=None, help="environment steps (default: by budget and env)")
    train.add_argument("--budget", choices=BUDGETS, default=None, help="default: $COMPANION_BUDGET, else book")
    train.add_argument("--out", type=Path, default=None, help="run directory (default: runs/ALGO/ENV/seedN)")
    train.add_argument("--hide", type=_indices, default=None,
                       help="observation dimensions to hide, e.g. 1,3 (CartPole velocities)")
    train.add_argument("--flicker", type=_probability, default=None, help="probability of blanking each observation")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting of the agent or the run (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--stop-at", type=_positive, default=None,
                       help="stop with a checkpoint at this step (for tests)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="evaluate a run directory's checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--episodes", type=_positive, default=10)
    evaluate.add_argument("--epsilon", type=_probability, default=None, help="default: the run's eval epsilon")
    evaluate.add_argument("--seed", type=_not_negative, default=12345)

    plot = commands.add_parser("plot", help="learning curves, mean and 95%% interval across seeds")
    plot.add_argument("run_dirs", type=Path, nargs="+")
    plot.add_argument("-o", "--output", type=Path, default=Path("curves.png"))
    plot.add_argument("--kind", default="eval",
                      help="eval, train, or update:NAME for a column of updates.csv (e.g. update:attention_entropy)")
    plot.add_argument("--title", default=None)

    sweep = commands.add_parser("sweep", help="run an experiment grid (a TOML file): locally, on Ray or on Slurm",
                                description="Run every train command of a grid file that is not done: finished runs "
                                            "are skipped, interrupted ones resume, failed ones run again. The grid's "
                                            "format: the docstring of companion/sweep.py, and experiments/ch2.toml.")
    sweep.add_argument("grid", type=Path, help="the grid file, e.g. experiments/ch2.toml")
    what = sweep.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true", help="print the grid's train commands; run nothing")
    what.add_argument("--status", action="store_true", help="print each run's state and the counts; run nothing")
    sweep.add_argument("--backend", choices=SWEEP_BACKENDS, default="local",
                       help="local: a process pool here (default); ray: Ray tasks; submitit: Slurm jobs")
    sweep.add_argument("--jobs", type=_positive, default=None,
                       help="local: runs at once (default: one per core); ray: the CPUs of a Ray started here")
    sweep.add_argument("--ray-address", default=None,
                       help="ray: a running cluster's address, e.g. auto (default: start Ray on this machine)")
    sweep.add_argument("--submitit-cluster", choices=("slurm", "local", "debug"), default=None,
                       help="submitit: where jobs run (default: Slurm where sbatch is found, else local)")
    sweep.add_argument("--submitit-folder", type=Path, default=None,
                       help="submitit: job files and logs (default: submitit/GRID_NAME beside the runs)")
    sweep.add_argument("--slurm-partition", default=None, help="submitit: the Slurm partition")
    sweep.add_argument("--timeout-min", type=_positive, default=None,
                       help="submitit: each job's time limit in minutes (default: 1440); a run cut off saves, "
                            "and its job requeues and resumes it")
    sweep.add_argument("--no-wait", action="store_true", help="submitit: submit the jobs and return")

    commands.add_parser("check", help="check the installation: versions, device, one step of each env family")
    return parser


def _train(args: argparse.Namespace) -> int:
    if not (args.algo and args.env or args.resume and args.out):
        raise ValueError("train needs --algo and --env (or, to continue a run, --resume --out DIR)")
    from companion.train import build_config, check_resume, train

    out = args.out or _default_out(args.algo, args.env, args.seed or 0, args.hide or (), args.flicker or 0.0)
    if args.resume:
        check_resume(out, _overrides(args.overrides), algo=args.algo, env_id=args.env, seed=args.seed,
                     budget=args.budget, total_steps=args.steps, hide=args.hide, flicker=args.flicker)
        result = train(None, None, out, resume=True, show_progress=not args.no_progress,  # type: ignore[arg-type]
                       stop_at=args.stop_at)
    else:
        run, agent = build_config(args.algo, args.env, seed=args.seed or 0, budget=args.budget,
                                  total_steps=args.steps or 0, overrides=_overrides(args.overrides),
                                  hide=args.hide or (), flicker=args.flicker or 0.0)
        result = train(run, agent, out, show_progress=not args.no_progress, stop_at=args.stop_at)
    state = ("already finished, nothing to resume" if result.already_finished else
             "stopped (resume with --resume)" if result.interrupted else "done")
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


def _sweep(args: argparse.Namespace) -> int:
    import time

    from companion.sweep import load_grid, run_sweep, status_report, summary

    backend_options = {"--jobs": (args.jobs, ("local", "ray")), "--ray-address": (args.ray_address, ("ray",)),
                       "--submitit-cluster": (args.submitit_cluster, ("submitit",)),
                       "--submitit-folder": (args.submitit_folder, ("submitit",)),
                       "--slurm-partition": (args.slurm_partition, ("submitit",)),
                       "--timeout-min": (args.timeout_min, ("submitit",)), "--no-wait": (args.no_wait, ("submitit",))}
    for option, (value, backends) in backend_options.items():
        if value not in (None, False) and args.backend not in backends:
            raise ValueError(f"{option} is an option of the {' and '.join(backends)} backend, not {args.backend}")
    grid = load_grid(args.grid)
    _check_train_commands(grid)
    if args.dry_run:
        print(f"# {len(grid.cells)} runs of {grid.path}, each run in {grid.root}")
        print("\n".join(grid.commands()))
        return 0
    if args.status:
        print(status_report(grid))
        return 0
    start = time.monotonic()
    total = len(grid.cells)
    reported: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        reported.append(outcome)
        print(f"[{len(reported)}/{total}] {outcome.line()}", flush=True)

    try:
        outcomes = run_sweep(grid, args.backend, jobs=args.jobs, ray_address=args.ray_address,
                             submitit_cluster=args.submitit_cluster, submitit_folder=args.submitit_folder,
                             slurm_partition=args.slurm_partition, timeout_min=args.timeout_min or 24 * 60,
                             wait=not args.no_wait, report=report)
    except ModuleNotFoundError as err:
        if err.name not in ("ray", "submitit"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(outcomes, time.monotonic() - start))
    return 0 if all(o.state == "done" or args.no_wait and o.state == "running?" for o in outcomes) else 1


def _check_train_commands(grid: Grid) -> None:
    """Parse every command of the grid as ``train`` would, so that a flag it does not take is the grid's one-line
    error, not a failed run per cell (settings, ``--set``, are checked by the run itself)."""
    import contextlib
    import io

    parser = build_parser()
    for cell in grid.cells:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                parser.parse_args(cell.argv())
        except SystemExit:
            message = errors.getvalue().strip().splitlines()
            raise ValueError(f"{grid.path}: the run {cell.out} is not a train command: "
                             f"{message[-1] if message else ''}") from None


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input (exit status 2) and a damaged run directory (1) are one line on stderr."""
    args = build_parser().parse_args(argv)
    from companion.records import DamagedRunError  # after parsing: --help and usage errors need no torch

    try:
        if args.command == "check":
            from companion.check import main as check_main

            return check_main()
        return {"train": _train, "eval": _eval, "plot": _plot, "sweep": _sweep}[args.command](args)
    except (BudgetError, ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input is a one-line error, not a traceback from deep inside torch.
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DamagedRunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
