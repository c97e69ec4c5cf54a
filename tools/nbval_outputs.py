"""Expected outputs for nbval, kept apart from the notebooks.

Notebooks in ``notebooks/`` are stored without outputs. A code cell whose output is deterministic
carries the comment ``# NBVAL_CHECK_OUTPUT``; its expected outputs live in
``tests/notebooks/expected/<notebook stem>.json`` (cell id -> outputs), where a reviewer sees them
change in a diff.

    python tools/nbval_outputs.py merge    # write notebooks/.nbval.<stem>.ipynb with expected outputs filled in
    python tools/nbval_outputs.py record   # execute the notebooks and store the outputs of checked cells
    python tools/nbval_outputs.py figures  # execute the notebooks and store only how many figures each shows

``make test`` merges, then runs ``pytest --nbval-lax`` over the merged copies. They sit next to the
originals so that a notebook runs from the same working directory as in the book.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ROOT / "tests" / "notebooks" / "expected"
MARK = "# NBVAL_CHECK_OUTPUT"
MERGED_PREFIX = ".nbval."
#: How many figures each chapter shows when executed in the repository, as the book build does:
#: the simulated-Colab run (tools/colab_sim.py) and the browser test over the built book compare with it.
FIGURES = ROOT / "tests" / "notebooks" / "figures.json"


def notebook_paths() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not p.name.startswith("."))


def checked_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and MARK in c.source]


def _clean(outputs: list[dict]) -> list[dict]:
    """Outputs without execution counts or metadata, which vary from run to run."""
    cleaned = []
    for out in outputs:
        out = dict(out)
        if "execution_count" in out:
            out["execution_count"] = None
        if "metadata" in out:
            out["metadata"] = {}
        cleaned.append(out)
    return cleaned


def merge() -> list[Path]:
    """Write a copy of each notebook with the expected outputs of its checked cells filled in."""
    for old in NOTEBOOKS.glob(MERGED_PREFIX + "*.ipynb"):
        old.unlink()
    merged, problems = [], []
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        expected_file = EXPECTED / f"{path.stem}.json"
        expected = json.loads(expected_file.read_text()) if expected_file.exists() else {}
        ids = set()
        for cell in checked_cells(nb):
            ids.add(cell.id)
            if cell.id not in expected:
                problems.append(f"{path.name}: checked cell {cell.id} has no expected output")
                continue
            cell.outputs = [nbformat.from_dict(o) for o in expected[cell.id]]
            cell.execution_count = 1  # nbval ignores a reference cell that looks unrun
        stale = set(expected) - ids
        if stale:
            problems.append(f"{path.name}: expected outputs for cells that are not checked: {sorted(stale)}")
        out = path.with_name(MERGED_PREFIX + path.name)
        nbformat.write(nb, out)
        merged.append(out)
    if problems:
        sys.exit("\n".join(problems) + "\nrun `make record-notebook-outputs` and review the diff")
    return merged


#: Output types that show as an image on the page (chapter 6's attention animation is a GIF).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/svg+xml")


def count_figures(nb: dict) -> int:
    """Images a notebook shows: one per display output that carries an image (works on plain JSON too)."""
    return sum(1 for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", [])
               if any(kind in out.get("data", {}) for kind in IMAGE_TYPES))


def _store_figures(stem: str, count: int) -> None:
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[stem] = count
    FIGURES.write_text(json.dumps(dict(sorted(figures.items())), indent=1) + "\n")


def _execute(path: Path, timeout: int) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # Run from notebooks/, as the book build does.
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    _store_figures(path.stem, count_figures(nb))
    return nb


def figures(names: list[str], timeout: int = 600) -> None:
    """Execute notebooks (all, or those named) and store how many figures each shows."""
    for path in notebook_paths():
        if not names or path.stem in names or path.name in names:
            _execute(path, timeout)
            print(f"{path.name}: {json.loads(FIGURES.read_text())[path.stem]} figures")


def record(names: list[str], timeout: int = 600) -> None:
    """Execute notebooks (all, or those named), store the outputs of their checked cells and the figure count."""
    EXPECTED.mkdir(parents=True, exist_ok=True)
    for path in notebook_paths():
        if names and path.stem not in names and path.name not in names:
            continue
        nb = _execute(path, timeout)
        expected = {cell.id: _clean(cell.outputs) for cell in checked_cells(nb)}
        target = EXPECTED / f"{path.stem}.json"
        if expected:
            target.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
            print(f"recorded {len(expected)} checked cell(s) of {path.name} -> {target.relative_to(ROOT)}")
        elif target.exists():
            target.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("merge")
    for name in ("record", "figures"):
        sub.add_parser(name).add_argument("notebooks", nargs="*", help="notebook stems or names (default: all)")
    args = parser.parse_args()
    if args.command == "merge":
        for path in merge():
            print(path.relative_to(ROOT))
    elif args.command == "figures":
        figures(args.notebooks)
    else:
        record(args.notebooks)


if __name__ == "__main__":
    main()
