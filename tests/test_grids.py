"""The book's experiment grids (``experiments/*.toml``, issue 17) against its stored runs: every run a grid names is
stored under ``results/``, finished, and its ``meta.json`` records exactly the grid's command for it (the train
command as typed, ``python -m companion train ... --out DIR --no-progress``: nothing is normalised, as every stored
run was started that way, by a shell script's ``xargs`` or by the sweep); every stored run is named by a grid.
The grids replaced the shell scripts ``experiments/ch2.sh`` ... ``ch7.sh``; each gives its script's commands in
its script's order (checked, while the scripts existed, against the commands they echoed: the fingerprints below).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from companion.sweep import load_grid, run_state

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
GRIDS = sorted((ROOT / "experiments").glob("*.toml"))

# The grids that replaced experiments/NAME.sh: how many commands, and the first 16 hex digits of the sha256 of
# the commands one a line (in order), as each script echoed them into its xargs (run against an empty results/
# with PY=echo, one job) before it was deleted; each list equalled the grid's, word for word and in order. A grid
# changed on purpose (a run added, say) changes its fingerprint: update it here, and its runs in results/.
SCRIPTS = {
    "ch2": (23, "38c75a266f4f8d1d"),
    "ch2_remedies": (18, "6b3ace288ffb3ceb"),
    "ch3": (80, "5cada3bcaff13a6e"),
    "ch4": (21, "4b8390806aa21bdc"),
    "ch4_delay": (69, "db4c098c095383c3"),
    "ch4_popgym": (18, "620dbc5fad90bde7"),
    "ch5": (9, "8f103ccfe73cc96a"),
    "ch5_popgym": (9, "c33e75f0c1f021b4"),
    "ch6": (36, "a331d7de0325a9cf"),
    "ch7": (42, "67922d8a5db89314"),
}


def _meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


@pytest.mark.parametrize("path", GRIDS, ids=[path.stem for path in GRIDS])
def test_a_grid_gives_the_commands_its_stored_runs_record(path):
    grid = load_grid(path)
    assert grid.root == ROOT
    stored = [cell for cell in grid.cells if (cell.run_dir / "meta.json").is_file()]
    if not stored and path.stem not in SCRIPTS:
        pytest.skip(f"no run of {path.name} is stored yet")
    missing = [cell.out for cell in grid.cells if cell not in stored]
    assert not missing, f"{len(missing)} runs of {path.name} are not stored, e.g. {missing[0]}"
    for cell, command in zip(grid.cells, grid.commands(), strict=True):
        assert cell.out.startswith("results/")
        assert _meta(cell.run_dir)["command"] == command, cell.out
        state = run_state(cell.run_dir)
        assert state.state == "done", (cell.out, state)


def test_every_stored_run_is_named_by_a_grid():
    named = {cell.run_dir for path in GRIDS for cell in load_grid(path).cells}
    stored = {meta.parent for meta in RESULTS.rglob("meta.json")}
    assert len(stored) >= sum(count for count, _ in SCRIPTS.values())
    assert not sorted(stored - named), f"stored runs no grid names: {sorted(stored - named)[:5]}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_grid_keeps_its_former_scripts_commands_and_order(name):
    commands = load_grid(ROOT / "experiments" / f"{name}.toml").commands()
    count, digest = SCRIPTS[name]
    assert (len(commands), hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]) == (count, digest)
    assert not (ROOT / "experiments" / f"{name}.sh").exists()


def test_the_grids_queue_runs_as_their_scripts_did():
    """Spot checks of the orders the fingerprints hold: seed by seed across chapter 3's two experiments, chapter
    6's longest runs first, chapter 5's longest delay first, chapter 2's remedies seed 0's intermediate steps
    beside the last step's runs."""
    ch3 = load_grid(ROOT / "experiments" / "ch3.toml").cells
    assert [cell.seed for cell in ch3] == [seed for seed in range(5) for _ in range(16)]
    assert [cell.experiment for cell in ch3[:2]] == ["ch3-cartpole", "ch3-pomdp"]
    ch6 = load_grid(ROOT / "experiments" / "ch6.toml").cells
    assert [cell.out for cell in ch6[:4]] == [f"results/ch6-minatar/darqn-soft/Seaquest/seed{seed}" for seed in
                                              range(3)] + ["results/ch6-minatar/darqn-soft/Breakout/seed0"]
    assert ch6[-1].variant == "dqn-stack4"
    ch5 = load_grid(ROOT / "experiments" / "ch5.toml").cells
    assert [cell.env_id for cell in ch5[:3]] == ["CueRecall-D256-v0", "CueRecall-D64-v0", "CueRecall-D16-v0"]
    remedies = load_grid(ROOT / "experiments" / "ch2_remedies.toml").cells
    assert [cell.variant for cell in remedies[:5]] == ["drqn-all-t250-tf2", "sadqn-all", "drqn-all", "drqn-all-t250",
                                                       "drqn-all-t250-tf2"]
