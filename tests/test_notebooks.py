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
    assert "--branch v" in first.source and "https://" in first.source  # pinned to a release tag


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
