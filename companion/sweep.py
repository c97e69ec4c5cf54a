"""Experiment grids: many training runs from one TOML file, run by a local process pool, Ray, or Slurm through
submitit (``python -m companion sweep``).

A grid is a declarative file in ``experiments/`` (read with Python's ``tomllib``): algorithms x envs x seeds x
named sets of ``--set`` overrides, the budget, the step count, and where each run's directory goes. Each cell of
the grid is exactly one ``python -m companion train ...`` command, the one its run's ``meta.json`` records:
``sweep GRID --dry-run`` prints them, and a run made by the sweep has the records of that command run by hand.
``experiments/*.toml`` are the book's runs: each grid gives the commands of the stored runs it names, word for
word (``tests/test_grids.py`` checks them against the runs' ``meta.json``).
Nothing here builds a config: the train command does, through :func:`companion.train.build_config`.

A grid file (``experiments/ch2.toml`` is the worked example; ``ch6.toml`` has agent tables and a block's
``order``, ``ch4_delay.toml`` per-env steps, ``ch3.toml`` interleaved blocks, ``ch2_remedies.toml`` agents'
own override sets and list-valued excludes)::

    root = ".."                      # the runs' working folder, relative to this file (default: the current one)
    out = "results/{experiment}/{variant}/{env}/seed{seed}"   # the default
    interleave = "seed"              # optional, the file's only: the blocks' runs queued seed by seed

    [[grid]]                         # one or more blocks; keys at the top are every block's defaults
    experiment = "ch2-pomdp"         # default: the file's name
    algos = ["dqn", "drqn"]
    envs = [{ id = "CartPole-v1", hide = [1, 3] }, { id = "CartPole-v1", flicker = 0.5 }]
    seeds = [0, 1, 2]                # or a count: 3
    steps = 100000                   # optional; budget = "book" too (else $COMPANION_BUDGET, as for train)
    set = { eval_episodes = 10 }     # --set overrides of every run of the block
    sets = { "" = {}, stack4 = { frame_stack = 4 } }   # named override sets: variants "dqn", "dqn-stack4", ...
    exclude = [{ algo = "drqn", set = "stack4" }]     # cells to leave out
    flags = []                       # further train flags, as typed
    order = ["seed", "env", "algo", "set"]            # the default: the block's loops, outermost first

An env is an id (``"CartPole-v1"``) or a table: ``id``, ``hide`` (indices), ``flicker`` (a probability), ``set``
(overrides for that env, e.g. ``{ prev_action = true }``), ``steps`` (that env's step count, in place of the
block's) and ``name`` (its folder; by default the id with ``/`` as ``-`` and the wrappers appended,
``CartPole-v1-hide1_3``, as ``train`` names its default ``--out``).

An algorithm is a name (``"dqn"``) or an agent table: ``algo``, ``name`` (the agent's folder, default the
algorithm), ``set`` (the agent's own overrides, given right after its ``--algo``) and ``sets`` (its own named
override sets, in place of the block's), e.g. ``{ algo = "dqn", name = "dqn-stack4", set = { frame_stack = 4 } }``
for ``--algo dqn --set frame_stack=4 ...`` into ``dqn-stack4/``. A run's variant is its agent's name (the
algorithm), then ``-NAME`` for an override set named ``NAME`` (the set named ``""`` adds nothing). The folder
pattern may use ``{experiment}``, ``{variant}``, ``{algo}``, ``{set}``, ``{env}``, ``{env_id}`` and ``{seed}``;
an ``exclude`` entry matches these fields (``env`` the folder or the id), a list matching any of its values
(``{ variant = ["a", "b"], seed = [1, 2] }``).

A run's command is ``train --algo ALGO [the agent's set] --env ID [--hide ...] [--flicker ...] --seed SEED``,
then ``[--budget ...] [--steps ...] [flags] [--set ...]``: those last overrides are the block's ``set``, then the
env's, then the override set's, each value as TOML gives it (``lr = 0.00025`` is written ``0.00025``; a string
keeps its text: ``lr_end = "1e-4"``). The order of the runs: each block's in turn, its loops nested as its
``order`` says (by default seeds, then envs, then algorithms, then override sets); with ``interleave = "seed"``
every block's runs of the lowest seed come first (block by block, each in its order), then those of the next
seed, and so on.

Backends (:data:`BACKENDS`), all running each cell as its own ``python -m companion train`` subprocess with torch
pinned to one thread (``OMP_NUM_THREADS=1``, and the run's ``threads`` setting, 1 by default):

- ``local``: a pool of ``jobs`` runs at once (default: one per core), started in the grid's order.
  Ctrl-C (SIGINT) or SIGTERM to the sweep is passed on to every run once: each finishes its episode (or
  rollout), saves a checkpoint and stops, and queued runs do not start (a second signal stops the runs
  without saving, as for ``train``).
- ``ray``: one Ray task per run (one CPU each) on a Ray started here (``ray.init()``) or on a running cluster
  (``address="auto"``). The runs' folder must be the same path on every node (a shared file system).
- ``submitit``: one job per run through submitit's ``AutoExecutor``: Slurm where ``sbatch`` is found, its
  ``local`` executor otherwise (the tests use it). Before a job's time limit, or when it is preempted, Slurm
  signals it; the run saves a checkpoint and the job requeues itself, and the requeued job resumes the run.

Every backend resumes: a finished run is skipped, an interrupted one (a checkpoint, not finished) continues with
``train ... --resume``, one that failed is run again; see :func:`run_state`. Each run's output goes to
``sweep.log`` in its directory, its last attempt to ``sweep.json`` (:data:`LOG_NAME`, :data:`STATUS_NAME`).
``sweep GRID --status`` prints every run's state without starting anything.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from companion.budget import BUDGETS

__all__ = ["BACKENDS", "DEFAULT_OUT", "LOG_NAME", "STATES", "STATUS_NAME", "Cell", "Grid", "GridError", "Outcome",
           "RunState", "env_dir_name", "last_error_line", "load_grid", "run_cell", "run_state", "run_sweep",
           "status_report", "summary"]

#: the backends :func:`run_sweep` knows: a local process pool, Ray, and Slurm (or its local stand-in) by submitit
BACKENDS = ("local", "ray", "submitit")
#: a run's directory, by default: the layout of ``results/`` (``results/ch2-pomdp/dqn-stack4/CartPole-v1/seed0``)
DEFAULT_OUT = "results/{experiment}/{variant}/{env}/seed{seed}"
#: what a run can be, as :func:`run_state` reads its directory
STATES = ("done", "running?", "interrupted", "failed", "not started")
#: the file in a run's directory that keeps the output of every attempt of the sweep to run it
LOG_NAME = "sweep.log"
#: the file in a run's directory that records the sweep's last attempt: where and when it ran, its exit status
STATUS_NAME = "sweep.json"

_BLOCK_KEYS = ("experiment", "algos", "envs", "seeds", "budget", "steps", "set", "sets", "exclude", "flags", "out",
               "order")
_TOP_KEYS = ("name", "description", "root", "grid")
_TOP_ONLY_KEYS = ("interleave",)  # keys of the file, not of a block
_ENV_KEYS = ("id", "name", "hide", "flicker", "steps", "set")
_AGENT_KEYS = ("algo", "name", "set", "sets")
_OUT_FIELDS = ("experiment", "variant", "algo", "set", "env", "env_id", "seed")
_ORDER = ("seed", "env", "algo", "set")  # a block's loops, outermost first, unless its order says otherwise
_RECENT_S = 600  # a checkpoint younger than this, of a run the sweep did not start, may belong to a live run
_SAVE_WAIT_S = 120  # how long a stopped run is given to save its checkpoint


class GridError(ValueError):
    """A grid file that cannot be run: not valid TOML, an unknown key, a missing or ill-typed value, an unknown
    algorithm, two runs with one directory. The message is one line and names the file (and the block)."""


# -- the grid --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a grid: one ``python -m companion train`` command.

    Attributes:
        experiment: the grid block's experiment (``{experiment}`` in the folder pattern).
        variant: the algorithm, then ``-NAME`` for the override set ``NAME``.
        algo: the algorithm (``--algo``).
        set_name: the name of its override set (``""`` for the set that adds nothing).
        env_id: the env's id (``--env``).
        env_name: the env's folder name (:func:`env_dir_name`, or the env table's ``name``).
        seed: the seed (``--seed``).
        args: the train command's arguments, without ``train``, ``--out`` and ``--no-progress``.
        out: the run directory as the command names it (relative to ``root`` unless absolute).
        root: the folder the command runs in.
    """

    experiment: str
    variant: str
    algo: str
    set_name: str
    env_id: str
    env_name: str
    seed: int
    args: tuple[str, ...]
    out: str
    root: Path

    @property
    def run_dir(self) -> Path:
        """The run directory."""
        return self.root / self.out

    def argv(self, resume: bool = False) -> list[str]:
        """``python -m companion``'s arguments: ``["train", "--algo", ..., "--out", OUT, "--no-progress"]``, and
        ``--resume`` to continue the run (the settings are given too, so that a resume of a run made with other
        settings is refused: :func:`companion.train.check_resume`)."""
        return ["train", *self.args, "--out", self.out, "--no-progress", *(["--resume"] if resume else [])]

    def command(self, resume: bool = False, python: str | None = None) -> list[str]:
        """The command: ``[python, "-m", "companion", *argv]`` (``python``: default, this interpreter)."""
        return [python or sys.executable, "-m", "companion", *self.argv(resume)]


@dataclasses.dataclass(frozen=True)
class Grid:
    """A grid file, expanded (:func:`load_grid`).

    Attributes:
        name: the grid's ``name``, else the file's name without ``.toml``.
        path: the file.
        root: the folder the runs' commands run in (absolute).
        cells: the runs, in the grid's order.
    """

    name: str
    path: Path
    root: Path
    cells: tuple[Cell, ...]

    def commands(self) -> list[str]:
        """The grid's train commands as a shell would take them, ``python -m companion train ...``, one a run
        (to be run in :attr:`root`): what ``sweep GRID --dry-run`` prints."""
        return [shlex.join(["python", "-m", "companion", *cell.argv()]) for cell in self.cells]


def env_dir_name(env_id: str, hide: Sequence[int] = (), flicker: float = 0.0) -> str:
    """An env's folder name: ``"CartPole-v1"``, ``"CartPole-v1-hide1_3"``, ``"CartPole-v1-flicker0.5"``,
    ``"MinAtar-Breakout-v1"`` (``train``'s default ``--out`` and a grid's ``{env}`` alike)."""
    name = env_id.replace("/", "-")
    if hide:
        name += "-hide" + "_".join(str(i) for i in hide)
    if flicker:
        name += f"-flicker{flicker:g}"
    return name


def load_grid(path: str | Path) -> Grid:
    """Read a grid file and expand it into its runs (the file's format: this module's docstring).

    Raises:
        FileNotFoundError: there is no such file.
        GridError: the file is not valid TOML, or holds an unknown key, a missing or ill-typed value, an unknown
            algorithm, or two runs with one run directory (one line, naming the file and the block).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise GridError("reading a grid on Python 3.10 needs tomli: pip install tomli") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no grid file {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path} is not valid TOML: {err}") from None
    _known_keys(data, (*_TOP_KEYS, *_BLOCK_KEYS, *_TOP_ONLY_KEYS), str(path))
    name = _text(data, "name", path.stem, str(path))
    _text(data, "description", "", str(path))
    interleave = data.get("interleave")
    if interleave not in (None, "seed"):
        raise GridError(f'{path}: interleave must be "seed" (the blocks\' runs queued seed by seed), not '
                        f"{interleave!r}")
    root = (path.parent / _text(data, "root", ".", str(path))).resolve() if "root" in data else Path.cwd()
    defaults = {key: value for key, value in data.items() if key in _BLOCK_KEYS}
    blocks = data.get("grid", [{}])
    if not (isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks) and blocks):
        raise GridError(f"{path}: grid must be blocks written [[grid]], each a table")
    cells: list[Cell] = []
    for index, block in enumerate(blocks, 1):
        where = f"{path} [[grid]] {index}" if "grid" in data else str(path)
        _known_keys(block, _BLOCK_KEYS, where)
        cells += _expand({**defaults, **block}, name, root, where)
    if not cells:
        raise GridError(f"{path}: the grid has no runs (is every cell excluded?)")
    if interleave == "seed":  # stable: within a seed, the blocks' order and each block's own
        cells.sort(key=lambda cell: cell.seed)
    _check_algos(cells, path)
    seen: dict[Path, Cell] = {}
    for cell in cells:
        other = seen.setdefault(cell.run_dir, cell)
        if other is not cell:
            raise GridError(f"{path}: two runs would share the directory {cell.out} ({shlex.join(other.args)} and "
                            f"{shlex.join(cell.args)}); put {{variant}}, {{env}} and {{seed}} in out")
    return Grid(name, path, root, tuple(cells))


@dataclasses.dataclass(frozen=True)
class _Env:
    id: str
    name: str
    args: tuple[str, ...]
    steps: int | None
    overrides: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Agent:
    algo: str
    name: str
    args: tuple[str, ...]  # its own --set overrides, given right after --algo
    sets: dict[str, dict[str, str]] | None  # its own named override sets, in place of the block's


def _expand(block: dict[str, Any], name: str, root: Path, where: str) -> list[Cell]:
    """The cells of one block, checked, in the block's order (seeds, then envs, then algorithms, then override
    sets, unless its ``order`` says otherwise)."""
    experiment = _text(block, "experiment", name, where)
    if not isinstance(block.get("algos"), list) or not block["algos"]:
        what = "is missing" if block.get("algos") is None else f"is {block['algos']!r}"
        raise GridError(f"{where}: algos {what}; expected a list of strings such as [\"dqn\"] (or agent tables)")
    agents = [_agent(agent, f"{where}: algos[{i}]") for i, agent in enumerate(block["algos"])]
    if not isinstance(block.get("envs"), list) or not block["envs"]:
        raise GridError(f"{where}: envs is missing or empty (a list of env ids or tables)")
    envs = [_env(env, f"{where}: envs[{i}]") for i, env in enumerate(block["envs"])]
    seeds = _seeds(block.get("seeds"), where)
    budget = block.get("budget")
    if budget is not None and budget not in BUDGETS:
        raise GridError(f"{where}: budget {budget!r} is not one of {', '.join(BUDGETS)}")
    steps = _steps(block, where)
    common = _overrides(block.get("set", {}), f"{where}: set")
    sets = _named_sets(block.get("sets", {"": {}}), where)
    flags = _strings(block, "flags", where)
    if any(f in ("--out", "--resume", "--no-progress", "--stop-at") for f in flags):
        raise GridError(f"{where}: flags may not hold --out, --resume, --no-progress or --stop-at (the sweep "
                        f"gives them)")
    excludes = block.get("exclude", [])
    if not (isinstance(excludes, list) and all(isinstance(e, dict) for e in excludes)):
        raise GridError(f"{where}: exclude must be a list of tables such as {{ algo = \"drqn\", set = \"stack4\" }}")
    for entry in excludes:
        _known_keys(entry, _OUT_FIELDS, f"{where}: exclude")
    pattern = _text(block, "out", DEFAULT_OUT, where)
    try:
        pattern.format(**dict.fromkeys(_OUT_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as err:
        raise GridError(f"{where}: out {pattern!r} is not a folder pattern with the fields "
                        f"{', '.join('{' + f + '}' for f in _OUT_FIELDS)} ({err!r})") from None
    order = block.get("order", list(_ORDER))
    if not (isinstance(order, list) and sorted(order) == sorted(_ORDER)):
        raise GridError(f"{where}: order must list seed, env, algo and set, each once, outermost loop first, not "
                        f"{order!r}")

    def excluded(fields: dict[str, Any], env: _Env) -> bool:
        def matches(key: str, value: Any) -> bool:
            values = value if isinstance(value, list) else [value]  # a list matches any of its values
            return fields[key] in values or key == "env" and env.id in values
        return any(all(matches(key, value) for key, value in entry.items()) for entry in excludes)

    ranked = []  # (the cell's position in each loop, the cell)
    for seed_at, seed in enumerate(seeds):
        for env_at, env in enumerate(envs):
            for agent_at, agent in enumerate(agents):
                for set_at, (set_name, overrides) in enumerate((agent.sets or sets).items()):
                    fields: dict[str, Any] = dict(experiment=experiment, variant=agent.name + (f"-{set_name}" if
                                                                                               set_name else ""),
                                                  algo=agent.algo, set=set_name, env=env.name, env_id=env.id,
                                                  seed=seed)
                    if excluded(fields, env):
                        continue
                    args = ["--algo", agent.algo, *agent.args, "--env", env.id, *env.args, "--seed", str(seed)]
                    args += ["--budget", budget] if budget else []
                    args += ["--steps", str(env.steps or steps)] if env.steps or steps else []
                    args += flags
                    for key, value in {**common, **env.overrides, **overrides}.items():
                        args += ["--set", f"{key}={value}"]
                    at = dict(seed=seed_at, env=env_at, algo=agent_at, set=set_at)
                    ranked.append(([at[loop] for loop in order],
                                   Cell(experiment, fields["variant"], agent.algo, set_name, env.id, env.name, seed,
                                        tuple(args), pattern.format(**fields), root)))
    ranked.sort(key=lambda item: item[0])
    return [cell for _, cell in ranked]


def _steps(table: dict[str, Any], where: str) -> int | None:
    steps = table.get("steps")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        raise GridError(f"{where}: steps must be a positive integer, not {steps!r}")
    return steps


def _named_sets(table: Any, where: str) -> dict[str, dict[str, str]]:
    """``sets``: named override tables, ``{ "" = {}, stack4 = { frame_stack = 4 } }``."""
    if not isinstance(table, dict) or not table:
        raise GridError(f'{where}: sets must be a table of named override tables, e.g. {{ "" = {{}}, '
                        f"stack4 = {{ frame_stack = 4 }} }}")
    return {set_name: _overrides(overrides, f"{where}: sets.{set_name}") for set_name, overrides in table.items()}


def _agent(entry: Any, where: str) -> _Agent:
    """An ``algos`` entry: an algorithm, or a table with ``algo``, its folder ``name``, its own overrides ``set``
    (given right after ``--algo``) and its own named override sets ``sets``."""
    if isinstance(entry, str) and entry:
        return _Agent(entry, entry, (), None)
    if not isinstance(entry, dict):
        raise GridError(f"{where} must be an algorithm or a table with algo, name, set, sets; got {entry!r}")
    _known_keys(entry, _AGENT_KEYS, where)
    algo = _text(entry, "algo", "", where)
    if not algo:
        raise GridError(f"{where} has no algo")
    args: list[str] = []
    for key, value in _overrides(entry.get("set", {}), f"{where}.set").items():
        args += ["--set", f"{key}={value}"]
    sets = _named_sets(entry["sets"], where) if "sets" in entry else None
    return _Agent(algo, _text(entry, "name", algo, where) or algo, tuple(args), sets)


def _env(entry: Any, where: str) -> _Env:
    """An ``envs`` entry: an id, or a table with ``id`` and the POMDP wrappers."""
    if isinstance(entry, str) and entry:
        return _Env(entry, env_dir_name(entry), (), None, {})
    if not isinstance(entry, dict):
        raise GridError(f"{where} must be an env id or a table with id, name, hide, flicker, steps, set; got "
                        f"{entry!r}")
    _known_keys(entry, _ENV_KEYS, where)
    env_id = _text(entry, "id", "", where)
    if not env_id:
        raise GridError(f"{where} has no id")
    hide = entry.get("hide", ())
    if isinstance(hide, str):
        hide = [int(i) if i.strip().isdigit() else -1 for i in hide.split(",") if i.strip()]
    if not (isinstance(hide, (list, tuple)) and all(_is_int(i) and i >= 0 for i in hide)):
        raise GridError(f"{where}: hide must be observation indices such as [1, 3], not {entry['hide']!r}")
    flicker = entry.get("flicker", 0.0)
    if not (isinstance(flicker, (int, float)) and not isinstance(flicker, bool) and 0.0 <= flicker <= 1.0):
        raise GridError(f"{where}: flicker must be a probability between 0 and 1, not {flicker!r}")
    args: list[str] = []
    if hide:
        args += ["--hide", ",".join(str(i) for i in hide)]
    if flicker:
        args += ["--flicker", _value(flicker)]
    name = _text(entry, "name", env_dir_name(env_id, tuple(hide), float(flicker)), where)
    return _Env(env_id, name, tuple(args), _steps(entry, where), _overrides(entry.get("set", {}), f"{where}.set"))


def _known_keys(table: dict[str, Any], known: Sequence[str], where: str) -> None:
    unknown = [key for key in table if key not in known]
    if unknown:
        raise GridError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(known)}")


def _text(table: dict[str, Any], key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise GridError(f"{where}: {key} must be a string, not {value!r}")
    return value


def _strings(table: dict[str, Any], key: str, where: str, required: bool = False) -> list[str]:
    value = table.get(key)
    if value is None and not required:
        return []
    if not (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
        what = "is missing" if value is None else f"is {value!r}"
        raise GridError(f"{where}: {key} {what}; expected a list of strings such as [\"dqn\"]")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seeds(value: Any, where: str) -> list[int]:
    """``seeds``: a count (``3``: seeds 0, 1, 2) or a list of distinct seeds of 0 or more."""
    if _is_int(value) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(_is_int(s) and s >= 0 for s in value) and len(set(value)) == len(
            value):
        return value
    what = "is missing" if value is None else f"is {value!r}"
    raise GridError(f"{where}: seeds {what}; expected a count (3) or a list of distinct seeds ([0, 1, 2])")


def _overrides(table: Any, where: str) -> dict[str, str]:
    """A table of ``--set`` overrides, as the text a command line gives them."""
    if not isinstance(table, dict):
        raise GridError(f"{where} must be a table of settings such as {{ frame_stack = 4 }}, not {table!r}")
    result = {}
    for key, value in table.items():
        if not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise GridError(f"{where}: {key!r} is not a setting's name")
        if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
                isinstance(v, (int, float, str)) for v in value)):
            raise GridError(f"{where}: {key} must be a number, a string, a boolean or a list of numbers")
        result[key] = _value(value)
    return result


def _value(value: Any) -> str:
    """A TOML value as a command line writes it: ``true``, ``4``, ``0.00025``, ``1,3``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ",".join(_value(v) for v in value)
    return str(value)


def _check_algos(cells: list[Cell], path: Path) -> None:
    """Refuse an algorithm that :data:`companion.agents.AGENTS` does not hold (torch is imported here)."""
    from companion.agents import AGENTS

    for cell in cells:
        if cell.algo not in AGENTS:
            raise GridError(f"{path}: unknown algorithm {cell.algo!r}; choose from {', '.join(sorted(AGENTS))}")


# -- a run's state ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunState:
    """What a run directory says about its run (:func:`run_state`).

    Attributes:
        state: one of :data:`STATES`.
        detail: a line for a person: the failed attempt's last error line, where a run may be running, the step
            an interrupted run stopped at.
        checkpoint: the directory holds a checkpoint to resume from.
        started_by_sweep: a sweep ran it (it holds :data:`STATUS_NAME`).
    """

    state: str
    detail: str = ""
    checkpoint: bool = False
    started_by_sweep: bool = False


def run_state(run_dir: str | Path) -> RunState:
    """Read a run directory, without loading anything heavier than JSON.

    - ``done``: ``meta.json`` says its last session ran to the end (``"interrupted": false`` and all of
      ``total_steps``, as :func:`companion.train.train` decides whether a resume has anything to do; a
      ``"finished"`` time alone is not enough: an interrupted session writes one too).
    - ``running?``: the sweep's last attempt is still running (its process is alive on this host, or it runs
      on another host, where it cannot be checked), or a run the sweep did not start wrote its checkpoint or
      config in the last 10 minutes (a train command run by hand may be training it).
    - ``failed``: the last attempt exited with an error (``detail``: its log's last line).
    - ``interrupted``: a checkpoint and no finish (stopped by a signal or ``--stop-at``, or killed), or a run
      the sweep started that was killed before its first checkpoint (it starts again).
    - ``not started``: nothing there, or nothing of a run.
    """
    run_dir = Path(run_dir)
    meta, config, mark = (_read_json(run_dir / name) for name in ("meta.json", "config.json", STATUS_NAME))
    by_sweep = bool(mark)
    checkpoint = any((run_dir / n).exists() for n in ("checkpoint.pt", "checkpoint.prev.pt"))
    total = config.get("run", {}).get("total_steps") if config else None
    if config and meta.get("interrupted") is False and total is not None and meta.get("steps", 0) >= total:
        return RunState("done", f"{meta.get('steps')} steps, last evaluation {meta.get('final_eval_mean_return')}",
                        checkpoint, by_sweep)
    gone = ""
    if mark.get("state") == "running":
        where = f"pid {mark.get('pid')} on {mark.get('host')} since {mark.get('started')}"
        if mark.get("host") != socket.gethostname() or _alive(mark.get("pid")):
            return RunState("running?", where, checkpoint, by_sweep)
        gone = f"its process ({where}) is gone"
    returncode = mark.get("returncode")
    if mark.get("state") == "exited" and _is_int(returncode) and returncode > 0:
        return RunState("failed", f"exit status {returncode}: {last_error_line(run_dir / LOG_NAME)}", checkpoint,
                        by_sweep)
    killed = gone or (f"killed by signal {-returncode}" if _is_int(returncode) and returncode < 0 else "")
    if checkpoint:
        if meta.get("interrupted") is True:
            return RunState("interrupted", f"stopped at step {meta.get('steps')}", checkpoint, by_sweep)
        if not by_sweep and _age(run_dir / "checkpoint.pt") < _RECENT_S:
            return RunState("running?", "a checkpoint written in the last 10 minutes, not by a sweep",
                            checkpoint, by_sweep)
        return RunState("interrupted", killed or "killed after a checkpoint", checkpoint, by_sweep)
    if config:
        if by_sweep:
            return RunState("interrupted", f"{killed or 'killed'} before its first checkpoint (it starts again)",
                            checkpoint, by_sweep)
        if _age(run_dir / "config.json") < _RECENT_S:
            return RunState("running?", "started in the last 10 minutes, not by a sweep", checkpoint, by_sweep)
        return RunState("failed", "a run with no checkpoint and no finish, not started by a sweep: remove its "
                                  "folder to start it again", checkpoint, by_sweep)
    return RunState("not started", killed, checkpoint, by_sweep)


def last_error_line(log: Path) -> str:
    """The last line that is not empty in the last attempt's part of a run's log (``""`` if none)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    for line in reversed(lines):
        if line.startswith("==> "):
            break
        if line.strip():
            return line.strip()
    return ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: Any) -> bool:
    if not _is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _write_json(data: dict[str, Any], target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, target)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def status_report(grid: Grid) -> str:
    """``sweep GRID --status``: one line per run, its state and :attr:`RunState.detail`, then the counts and the
    done runs' wall time (the sum of their ``meta.json`` ``wall_seconds``: one core's time, not the sweep's)."""
    states = [(cell, run_state(cell.run_dir)) for cell in grid.cells]
    lines = [f"{state.state:<12} {cell.out}" + (f": {state.detail}" if state.detail and state.state != "done" else "")
             for cell, state in states]
    counts = {name: sum(state.state == name for _, state in states) for name in STATES}
    lines.append(f"{len(states)} runs: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
    seconds = [_read_json(cell.run_dir / "meta.json").get("wall_seconds") for cell, state in states
               if state.state == "done"]
    seconds = [float(value) for value in seconds if isinstance(value, (int, float))]
    if seconds:
        lines.append(f"wall time of the {len(seconds)} done runs (meta.json): {sum(seconds) / 3600:.2f} h in all, "
                     f"median {statistics.median(seconds):.0f} s, longest {max(seconds):.0f} s")
    return "\n".join(lines)


# -- running a cell --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of a run in a sweep.

    Attributes:
        cell: the run.
        state: the run's state afterwards (one of :data:`STATES`).
        action: what the sweep did: ``"skipped"`` (done, or running elsewhere), ``"started"``, ``"resumed"``,
            ``"restarted"`` (killed before its first checkpoint), ``"not started"`` (the sweep was stopped first).
        detail: the state's line (:attr:`RunState.detail`), e.g. the error line of a failed run.
        seconds: wall time of the attempt.
        returncode: the train command's exit status (``None`` if it did not run).
    """

    cell: Cell
    state: str
    action: str
    detail: str = ""
    seconds: float = 0.0
    returncode: int | None = None

    def line(self) -> str:
        """One line for a person: ``done (started, 12.3 s)  results/...``, with the detail where it matters."""
        what = f"{self.state} ({self.action}" + (f", {self.seconds:.1f} s)" if self.returncode is not None else ")")
        show = self.detail and self.state != "done"
        return f"{what:<28} {self.cell.out}" + (f": {self.detail}" if show else "")


def run_cell(cell: Cell, *, on_start: Callable[[subprocess.Popen], None] | None = None,
             ignore_usr2: bool = False) -> Outcome:
    """Run one cell to its end, in this process's thread, whatever the backend: skip it if it is done (or running
    elsewhere), resume it if it has a checkpoint, otherwise start it (again); then read its state.

    The command runs in ``cell.root`` in its own session (a Ctrl-C at the terminal reaches the sweep, which passes
    it on once), with ``OMP_NUM_THREADS=1``, its output appended to :data:`LOG_NAME` under a ``==>`` line, and
    :data:`STATUS_NAME` saying ``running`` (host, pid) and then ``exited`` (exit status). A ``KeyboardInterrupt``
    here (Ray's cancel) is passed to the run as SIGINT, which is given time to save.

    Args:
        cell: the run.
        on_start: called with the process once it has started (the local pool keeps it to pass signals on).
        ignore_usr2: the run ignores SIGUSR2 (the signal Slurm sends a submitit job before its time limit: the job
            handles it, and stops the run with SIGTERM).
    """
    before = run_state(cell.run_dir)
    if before.state == "done" or before.state == "running?":
        return Outcome(cell, before.state, "skipped", before.detail)
    resume = before.checkpoint
    action = "resumed" if resume else "started"
    if not resume and (cell.run_dir / "config.json").exists():
        if not before.started_by_sweep:
            return Outcome(cell, before.state, "skipped", before.detail)
        for name in ("config.json", "meta.json", "metrics.csv", "eval.csv", "updates.csv"):  # train's first files
            (cell.run_dir / name).unlink(missing_ok=True)
        action = "restarted"
    command = cell.command(resume)
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    with open(cell.run_dir / LOG_NAME, "a") as log:
        log.write(f"==> {_now()} on {socket.gethostname()} in {cell.root}: {shlex.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, cwd=cell.root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, preexec_fn=_ignore_usr2 if ignore_usr2 else None)
        _write_json({"state": "running", "host": socket.gethostname(), "pid": process.pid, "started": _now(),
                     "command": shlex.join(command)}, cell.run_dir / STATUS_NAME)
        if on_start is not None:
            on_start(process)
        try:
            returncode = _wait(process)
        except BaseException:  # KeyboardInterrupt (a Ray cancel), SystemExit: let the run save first
            _stop(process, signal.SIGINT)
            raise
        finally:
            if process.returncode is not None:
                _write_json({"state": "exited", "host": socket.gethostname(), "pid": process.pid, "ended": _now(),
                             "returncode": process.returncode, "command": shlex.join(command)},
                            cell.run_dir / STATUS_NAME)
    after = run_state(cell.run_dir)
    return Outcome(cell, after.state, action, after.detail, time.monotonic() - start, returncode)


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _wait(process: subprocess.Popen) -> int:
    """``process.wait()`` in short steps, so that a signal handler of this thread may wait on it too."""
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass


def _stop(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to a run and give it :data:`_SAVE_WAIT_S` to save and exit."""
    if process.poll() is None:
        process.send_signal(signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_SAVE_WAIT_S)


# -- backends --------------------------------------------------------------------------------------------------
def run_sweep(grid: Grid, backend: str = "local", *, jobs: int | None = None, ray_address: str | None = None,
              submitit_cluster: str | None = None, submitit_folder: str | Path | None = None,
              slurm_partition: str | None = None, timeout_min: int = 24 * 60, wait: bool = True,
              report: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run every cell of ``grid`` that is not done, on ``backend``, and return their outcomes in the grid's order.

    Args:
        grid: from :func:`load_grid`.
        backend: one of :data:`BACKENDS`.
        jobs: ``local``: runs at once (default: one per core); ``ray``: the CPUs of a Ray started here.
        ray_address: ``ray``: a running cluster's address (``"auto"``); ``None`` starts Ray on this machine.
        submitit_cluster: ``submitit``: ``"slurm"``, ``"local"`` or ``"debug"``; ``None``: Slurm where it is found.
        submitit_folder: ``submitit``: its job files and logs (default: ``ROOT/submitit/GRID``).
        slurm_partition: ``submitit``: the Slurm partition.
        timeout_min: ``submitit``: each job's time limit; a run cut off by it saves, requeues and resumes.
        wait: ``submitit``: wait for the jobs (``False``: submit them and return; ``--status`` follows them).
        report: called with each outcome as it comes (default: nothing).

    Raises:
        ValueError: an unknown backend.
        ModuleNotFoundError: ``ray`` or ``submitit`` is not installed (one line naming the pip package).
    """
    report = report or (lambda outcome: None)
    cells = list(grid.cells)
    if backend == "local":
        outcomes = _run_local(cells, jobs or _cores(), report)
    elif backend == "ray":
        outcomes = _run_ray(cells, ray_address, jobs, report)
    elif backend == "submitit":
        folder = Path(submitit_folder) if submitit_folder else grid.root / "submitit" / grid.name
        outcomes = _run_submitit(cells, folder, submitit_cluster, slurm_partition, timeout_min, grid.name, wait,
                                 report)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    order = {cell: i for i, cell in enumerate(cells)}
    return sorted(outcomes, key=lambda outcome: order[outcome.cell])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_local(cells: list[Cell], jobs: int, report: Callable[[Outcome], None]) -> list[Outcome]:
    """A pool of ``jobs`` threads, each running one cell's subprocess at a time; SIGINT and SIGTERM to this
    process are passed on to every live run, and stop queued runs from starting."""
    lock = threading.Lock()
    live: list[subprocess.Popen] = []
    received: list[int] = []

    def started(process: subprocess.Popen) -> None:
        with lock:
            live.append(process)
            if received:  # the signal came while this run was starting
                process.send_signal(received[-1])

    def handler(signum: int, frame: Any) -> None:
        with lock:
            received.append(signum)
            for process in live:
                process.send_signal(signum)  # Popen.send_signal skips a process that has exited
        name = signal.Signals(signum).name
        os.write(2, (f"\nsweep: {name} passed on to the runs: each saves a checkpoint and stops; no new run starts "
                     f"({name} again stops them without saving)\n" if len(received) == 1 else
                     f"\nsweep: {name} passed on again: the runs stop without saving\n").encode())

    def one(cell: Cell) -> Outcome:
        if received:
            state = run_state(cell.run_dir)
            return Outcome(cell, state.state, "not started", state.detail)
        return run_cell(cell, on_start=started)

    outcomes = []
    with _signal_handlers(handler), concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        pending = {pool.submit(one, cell): cell for cell in cells}
        while pending:
            done, _ = concurrent.futures.wait(pending, timeout=0.5,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                outcome = _outcome(future.result, pending.pop(future))
                outcomes.append(outcome)
                report(outcome)
    return outcomes


@contextlib.contextmanager
def _signal_handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block (where this is the main thread; elsewhere nothing)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _outcome(result: Callable[[], Outcome], cell: Cell) -> Outcome:
    """``result()``, or a failed outcome with the exception's line (a backend's error, not the run's)."""
    try:
        return result()
    except Exception as err:  # an error of the backend or of this process (the run's own are in its log)
        message = str(err).strip().splitlines()
        return Outcome(cell, "failed", "not started", f"{type(err).__name__}: {message[-1] if message else ''}")


def _require(module: str, package: str) -> Any:
    """Import an optional backend, or one line naming what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"the {module} backend needs the {package} package: pip install {package} (or "
                                  f"pip install -e '.[sweep]')", name=module) from None


def _interrupt_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_ray(cells: list[Cell], address: str | None, cpus: int | None,
             report: Callable[[Outcome], None]) -> list[Outcome]:
    """One Ray task (one CPU) per cell. Ctrl-C or SIGTERM cancels the tasks: each passes SIGINT to its run."""
    ray = _require("ray", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1, max_retries=0)(run_cell)
    refs = {task.remote(cell): cell for cell in cells}
    outcomes = []
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if threading.current_thread() is \
        threading.main_thread() else None
    try:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                outcome = _outcome(lambda ref=ref: ray.get(ref), refs[ref])
                outcomes.append(outcome)
                report(outcome)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        done, _ = ray.wait(pending, num_returns=len(pending), timeout=_SAVE_WAIT_S)
        for ref in pending:
            outcome = _outcome(lambda ref=ref: ray.get(ref, timeout=1), refs[ref])
            state = run_state(refs[ref].run_dir)
            outcomes.append(dataclasses.replace(outcome, state=state.state, detail=state.detail))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if started_here:
            ray.shutdown()
    return outcomes


class _SubmititRun:
    """A submitit job's function: run one cell (:func:`run_cell`); when Slurm signals the job (time limit or
    preemption), stop the run with SIGTERM, let it save, and requeue the job (submitit's ``checkpoint``), which
    then resumes it."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cell": self.cell, "_process": None}

    def __call__(self) -> Outcome:
        return run_cell(self.cell, on_start=self._started, ignore_usr2=True)

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        if self._process is not None:
            _stop(self._process, signal.SIGTERM)
        return submitit.helpers.DelayedSubmission(_SubmititRun(self.cell))


def _run_submitit(cells: list[Cell], folder: Path, cluster: str | None, partition: str | None, timeout_min: int,
                  name: str, wait: bool, report: Callable[[Outcome], None]) -> list[Outcome]:
    """One submitit job per cell (one task, one CPU). Ctrl-C or SIGTERM cancels the jobs (Slurm's SIGTERM makes
    each run save)."""
    submitit = _require("submitit", "submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    parameters: dict[str, Any] = dict(timeout_min=timeout_min, cpus_per_task=1, tasks_per_node=1, nodes=1,
                                      name=f"sweep-{name}")
    if partition:
        parameters["slurm_partition"] = partition
    executor.update_parameters(**parameters)
    todo, outcomes = [], []
    for cell in cells:  # what a job would skip is skipped here, without a job
        state = run_state(cell.run_dir)
        if state.state in ("done", "running?"):
            outcomes.append(Outcome(cell, state.state, "skipped", state.detail))
            report(outcomes[-1])
        else:
            todo.append(cell)
    if not todo:
        return outcomes
    with executor.batch():
        jobs = [executor.submit(_SubmititRun(cell)) for cell in todo]
    if not wait:
        print(f"submitted {len(jobs)} jobs ({executor.cluster}): {', '.join(job.job_id for job in jobs)}; their "
              f"files in {folder}; sweep GRID --status follows them")
        return outcomes + [Outcome(cell, "running?", "started", f"job {job.job_id}")
                           for cell, job in zip(todo, jobs, strict=True)]
    by_job = {job.job_id: cell for job, cell in zip(jobs, todo, strict=True)}
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if threading.current_thread() is \
        threading.main_thread() else None
    try:
        for job in submitit.helpers.as_completed(jobs):
            outcome = _outcome(job.result, by_job[job.job_id])
            outcomes.append(outcome)
            report(outcome)
    except KeyboardInterrupt:
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
        reported = {outcome.cell for outcome in outcomes}
        for job in jobs:
            cell = by_job[job.job_id]
            if cell not in reported:
                state = run_state(cell.run_dir)
                outcomes.append(Outcome(cell, state.state, "started", state.detail))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcomes


def summary(outcomes: Sequence[Outcome], seconds: float | None = None) -> str:
    """The counts of a sweep's outcomes by state, how many were skipped as done, and the wall time."""
    counts = {name: sum(o.state == name for o in outcomes) for name in STATES}
    skipped = sum(o.action == "skipped" and o.state == "done" for o in outcomes)
    text = f"{len(outcomes)} runs: " + ", ".join(f"{n} {name}" for name, n in counts.items())
    text += f" ({skipped} done before)" if skipped else ""
    if seconds is not None:
        text += f"; {seconds:.0f} s"
    if counts["interrupted"] or counts["not started"]:
        text += "; run the sweep again to resume"
    return text
