"""Run directories: what a training run leaves behind, and where it came from.

A run directory holds

- ``config.json``: the full settings (the run's and the agent's), enough to run it again;
- ``meta.json``: provenance: the command, package and library versions, git commit, hardware,
  seed, budget, wall time, steps done;
- ``metrics.csv``: one row per training episode: ``episode, step, return, length``;
- ``eval.csv``: one row per evaluation: ``step, mean_return, std_return, episodes``;
- ``updates.csv``: the agent's training scalars (loss, mean Q, and e.g. DARQN's attention entropy),
  averaged over the updates of each block of :data:`UPDATE_LOG_EVERY` env steps: ``step, <name>...``;
- ``policy.pt``: the online network's weights at the end of the run (small; committed where a chapter
  draws from a trained agent);
- ``checkpoint.pt`` (networks, optimizer, counters, random states) and ``replay.pt`` (the replay
  buffer), both loadable with ``torch.load(..., weights_only=True)``: loading them runs no code;
  ``checkpoint.prev.pt``, the checkpoint before, to fall back to (see :meth:`RunDir.save_checkpoint`).

The CSVs hold nothing that depends on timing, so two runs with the same seed
on the same machine produce identical files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["METRICS_FIELDS", "EVAL_FIELDS", "UPDATE_LOG_EVERY", "Checkpoint", "DamagedRunError", "RunDir", "load_file",
           "provenance", "read_csv", "results_dir", "save_benchmark"]

#: the columns of ``metrics.csv``, one row per training episode
METRICS_FIELDS = ("episode", "step", "return", "length")
#: the columns of ``eval.csv``, one row per evaluation
EVAL_FIELDS = ("step", "mean_return", "std_return", "episodes")
#: env steps per row of ``updates.csv``
UPDATE_LOG_EVERY = 1_000


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, git commit and hardware of this process."""
    import gymnasium

    import companion

    commit = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    hardware: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device or "cpu"),
    }
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name()
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("")
    if program.name == "__main__.py" and program.parent.name == "companion":
        program = Path("python -m companion")
    return {
        "command": " ".join([str(program), *sys.argv[1:]]),
        "companion": companion.__version__, "git_commit": commit, "git_dirty": dirty,
        "python": platform.python_version(), "torch": torch.__version__, "gymnasium": gymnasium.__version__,
        "numpy": np.__version__, "hardware": hardware,
    }


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """A CSV of numbers as columns: ``{"step": array([...]), ...}`` (empty arrays if no rows)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        fields = reader.fieldnames or []
    return {name: np.array([float(row[name]) for row in rows]) for name in fields}


class DamagedRunError(Exception):
    """A file of a run directory that cannot be loaded (truncated or corrupted), or a checkpoint that cannot
    be resumed exactly. The message is one line: which file, and what to do."""


def load_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a damaged file raises :class:`DamagedRunError`.

    Raises:
        FileNotFoundError, PermissionError: as they come (a file that is not there, or may not be read, is
            not a damaged one).
        DamagedRunError: the file does not load: truncated (a disk that filled up, a copy cut short) or
            corrupted. (A flipped bit inside a tensor's data loads without complaint: torch keeps no
            checksum of it.)
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # RuntimeError, OSError, EOFError, UnpicklingError, KeyError, UnicodeDecodeError...
        raise DamagedRunError(f"{path} is damaged (truncated or corrupted) and cannot be loaded") from err


def _save_atomically(payload: dict[str, Any], target: Path, previous: Path | None = None) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` it onto ``target``: a kill at any moment leaves
    either the old file or the new one, never half of one. With ``previous``, the old file moves there first."""
    tmp = target.with_suffix(".tmp")
    torch.save(payload, tmp)
    if previous is not None and target.exists():
        os.replace(target, previous)
    os.replace(tmp, target)


def _write_json_atomically(data: dict[str, Any], target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, target)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DamagedRunError(f"{path} is damaged (not valid JSON) and cannot be read") from err


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint as :meth:`RunDir.load_checkpoint` found it.

    Attributes:
        state: what the harness saved: the agent, torch's random state, the loop's state.
        replay: the replay buffer saved with it (``None`` for an on-policy run, or when not asked for).
        path: the file it came from: ``checkpoint.pt``, or ``checkpoint.prev.pt`` after a fall-back.
        passed_over: why newer files were not used, one line each (empty if none were).
    """

    state: dict[str, Any]
    replay: dict[str, Any] | None
    path: Path
    passed_over: list[str]


class RunDir:
    """One run's directory. Create it with :meth:`create`, reopen it with the constructor."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    meta_path = property(lambda self: self.path / "meta.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    eval_path = property(lambda self: self.path / "eval.csv")
    updates_path = property(lambda self: self.path / "updates.csv")
    policy_path = property(lambda self: self.path / "policy.pt")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint_path = property(lambda self: self.path / "checkpoint.prev.pt")
    replay_path = property(lambda self: self.path / "replay.pt")

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> RunDir:
        """A new run directory with ``config.json`` and empty CSVs; refuses to overwrite another run."""
        run = cls(path)
        if run.config_path.exists():
            raise FileExistsError(f"{run.path} already holds a run; pass --resume to continue it, "
                                  f"or choose another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        for csv_path, fields in ((run.metrics_path, METRICS_FIELDS), (run.eval_path, EVAL_FIELDS)):
            csv_path.write_text(",".join(fields) + "\n")
        _write_json_atomically(config, run.config_path)  # last: a directory with config.json is a run
        return run

    def config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not a run directory (no config.json)")
        return _read_json(self.config_path)

    def meta(self) -> dict[str, Any]:
        return _read_json(self.meta_path) if self.meta_path.exists() else {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        _write_json_atomically(meta, self.meta_path)

    def metrics(self) -> dict[str, np.ndarray]:
        return read_csv(self.metrics_path)

    def evals(self) -> dict[str, np.ndarray]:
        return read_csv(self.eval_path)

    def updates(self) -> dict[str, np.ndarray]:
        """The training scalars (empty if the run logged none)."""
        return read_csv(self.updates_path) if self.updates_path.exists() else {}

    def append_updates(self, step: int, means: dict[str, float]) -> None:
        """Append one row of averaged training scalars; the first row writes the header."""
        new = not self.updates_path.exists()
        with open(self.updates_path, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(("step", *means))
            writer.writerow((step, *(f"{v:.6g}" for v in means.values())))

    def append(self, which: str, row: tuple) -> None:
        """Append a row to ``"metrics"`` or ``"eval"``."""
        path = self.metrics_path if which == "metrics" else self.eval_path
        with open(path, "a", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(row)

    def last_eval(self) -> float:
        """The mean return of the run's last evaluation, from ``eval.csv`` (nan if there is none)."""
        means = self.evals().get("mean_return", np.array([]))
        return float(means[-1]) if len(means) else float("nan")

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows written after ``step``: they belong to the part of a run a resume replays (and a
        last row without its line end: a run killed while writing it)."""
        for path in (self.metrics_path, self.eval_path, self.updates_path):
            if not path.exists():
                continue
            lines = path.read_text().splitlines(keepends=True)
            header, rows = lines[0], [r for r in lines[1:] if r.endswith("\n")]
            column = header.strip().split(",").index("step")
            kept = [r for r in rows if int(float(r.split(",")[column])) <= step]
            path.write_text(header + "".join(kept))

    def save_checkpoint(self, state: dict[str, Any], replay: dict[str, Any] | None, step: int) -> None:
        """Write ``checkpoint.pt``, then ``replay.pt``, each atomically; the checkpoint before becomes
        ``checkpoint.prev.pt``.

        The two files are one pair, written one after the other, so both record ``step`` (the checkpoint
        as ``replay_step``, ``None`` without a replay buffer; the buffer as ``checkpoint_step``). A run
        killed between the two writes leaves a new checkpoint beside the old buffer: :meth:`load_checkpoint`
        sees that the steps differ and takes ``checkpoint.prev.pt``, the checkpoint that old buffer belongs to.
        """
        _save_atomically({**state, "replay_step": None if replay is None else step}, self.checkpoint_path,
                         previous=self.previous_checkpoint_path)
        if replay is not None:
            _save_atomically({**replay, "checkpoint_step": step}, self.replay_path)

    def save_policy(self, state: dict[str, Any]) -> None:
        """Write ``policy.pt``: the online network's ``state_dict``, enough to act and draw attention maps."""
        _save_atomically(state, self.policy_path)

    def load_checkpoint(self, with_replay: bool = True) -> Checkpoint:
        """The newest checkpoint to resume from: ``checkpoint.pt``, else ``checkpoint.prev.pt`` (loaded with
        ``weights_only=True``: tensors and plain data only, never code).

        A checkpoint is passed over if it is damaged, or (``with_replay``) if it was saved with a replay
        buffer that ``replay.pt`` does not hold: a run killed between the two writes of
        :meth:`save_checkpoint`. (Run directories written before the steps were recorded pair as they are.)

        Raises:
            FileNotFoundError: there is no checkpoint (the run stopped before its first).
            DamagedRunError: no checkpoint can be resumed exactly (the message says how to start again).
        """
        restart = f"remove {self.path} (or choose another --out) to start the run again"
        found = [p for p in (self.checkpoint_path, self.previous_checkpoint_path) if p.exists()]
        if not found:
            raise FileNotFoundError(f"{self.path} has no checkpoint to resume from (the run stopped before its "
                                    f"first); {restart}")
        replay = None
        if with_replay and self.replay_path.exists():
            try:
                replay = load_file(self.replay_path)
            except DamagedRunError as err:
                raise DamagedRunError(f"{err}; {restart}") from err
        passed_over = []
        for path in found:
            try:
                state = load_file(path)
            except DamagedRunError as err:
                passed_over.append(str(err))
                continue
            wanted, held = state.get("replay_step"), (replay or {}).get("checkpoint_step")
            if with_replay and wanted is not None and held != wanted:
                holds = "is missing" if replay is None else f"holds step {held}'s"
                passed_over.append(f"{path} (step {wanted}) needs the replay buffer saved with it, and "
                                   f"{self.replay_path.name} {holds}")
                continue
            if replay is not None:
                replay = {k: v for k, v in replay.items() if k != "checkpoint_step"}
            return Checkpoint(state, replay, path, passed_over)
        raise DamagedRunError(f"cannot resume {self.path} exactly: {'; '.join(passed_over)}; {restart}")

    def restore_previous_checkpoint(self) -> None:
        """Make ``checkpoint.prev.pt`` the checkpoint again, in place of the ``checkpoint.pt`` a resume passed
        over: the next :meth:`save_checkpoint` then keeps it as the one to fall back to, should that save be
        killed too (moved aside, the passed-over file would take its place)."""
        os.replace(self.previous_checkpoint_path, self.checkpoint_path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def results_dir(start: str | Path | None = None) -> Path | None:
    """The repository's ``results/`` folder: ``$COMPANION_RESULTS`` if set, else the first ``results``
    folder found from ``start`` (default: the working directory) upwards. ``None`` if there is none,
    as on Colab, where only the package is installed."""
    if os.environ.get("COMPANION_RESULTS"):
        path = Path(os.environ["COMPANION_RESULTS"])
        return path if path.is_dir() else None
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "results").is_dir():
            return folder / "results"
    return None


def save_benchmark(name: str, rows: list[dict[str, Any]], device: torch.device | str,
                   folder: str | Path, **extra: Any) -> Path:
    """Write a benchmark's rows with their provenance to ``folder/<name>[_<device>].json`` and return the path.

    The record says when, on what (``hardware``: the GPU's name, or the CPU and its core count, and the
    torch threads) and with which versions and commit (``provenance``) the figures were measured.
    """
    device = torch.device(device)
    info = provenance(device)
    machine = info["hardware"].get("gpu") or f"{platform.machine()} CPU, {info['hardware']['cpu_count']} cores"
    record = {"benchmark": name, "date": now(), "rows": rows, **extra, "torch": torch.__version__,
              "hardware": f"{machine}, {torch.get_num_threads()} torch thread(s)", "provenance": info}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{'' if device.type == 'cpu' else '_' + device.type}.json"
    path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return path
