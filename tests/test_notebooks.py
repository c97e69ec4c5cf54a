"""Notebook hygiene: stored without outputs, listed in the table of contents, links in sync."""

from pathlib import Path

import nbformat
import pytest
import yaml
from sync_links import INSTALL_CELL_TAGS, install_cell_source, sync

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name.startswith("."))


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root"):
                files.append(value)
            else:
                files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them (Jupyter: Edit > Clear All Outputs)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_with_the_colab_install_cell(path):
    first = nbformat.read(path, as_version=4).cells[0]
    assert first.cell_type == "code"
    assert first.metadata.get("tags") == INSTALL_CELL_TAGS
    assert first.source == install_cell_source()
    assert '"--branch", "v' in first.source and "https://" in first.source  # pinned to a release tag


def test_toc_and_notebooks_agree():
    toc = _toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    for entry in toc:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml: {entry} is missing"
    listed = {entry for entry in toc if entry.startswith("notebooks/")}
    assert listed == {f"notebooks/{p.stem}" for p in NOTEBOOKS}


def test_repository_url_and_version_copies_are_in_sync():
    assert sync(check=True) == [], "run `make sync-links`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_lines_fit_the_book_column(path):
    # The book's code blocks show about 79 characters before a reader must scroll sideways.
    nb = nbformat.read(path, as_version=4)
    long_lines = [
        f"cell {i}: {line}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and "remove-cell" not in cell.metadata.get("tags", [])
        for line in cell.source.splitlines()
        if len(line) > 79
    ]
    assert not long_lines, "\n".join(long_lines)


#: Tags under which the book folds a cell's code (Jupyter Book: a toggle, the output still shown) or drops it.
FOLDED_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
#: A code cell that teaches (the code is the lesson: an algorithm written out, an exercise) may run longer.
TEACHES_TAG = "teaches"
MAX_VISIBLE_LINES = 15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_plumbing_is_folded(path):
    """A reader scrolls past no code cell longer than 15 lines unless it teaches: plot layout, table
    formatting and loading stored runs live in ``companion.plots``/``companion.viz`` or are folded."""
    nb = nbformat.read(path, as_version=4)
    long_cells = []
    for i, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type != "code" or tags & FOLDED_TAGS or TEACHES_TAG in tags:
            continue
        lines = len(cell.source.strip().splitlines())
        if lines > MAX_VISIBLE_LINES:
            long_cells.append(f"cell {i}: {lines} lines, starting {cell.source.splitlines()[0]!r}")
    assert not long_cells, (
        f"{len(long_cells)} visible code cells over {MAX_VISIBLE_LINES} lines: move the plumbing into a "
        f"companion helper, fold it ('hide-input'), or tag the cell '{TEACHES_TAG}' if the code is the lesson\n"
        + "\n".join(long_cells))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_that_teach_are_few(path):
    """The 'teaches' tag is not a way around folding: at most a quarter of a chapter's code cells (or three)
    carry it."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    teaching = [c for c in code if TEACHES_TAG in c.metadata.get("tags", [])]
    assert len(teaching) <= max(3, len(code) // 4), f"{len(teaching)} of {len(code)} code cells tagged '{TEACHES_TAG}'"
