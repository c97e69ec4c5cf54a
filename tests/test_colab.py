"""Colab shows what the book shows.

The chapters are run as Colab runs them (``tools/colab_sim.py``: the wheel in a fresh virtual environment,
each notebook alone in an empty folder at the quick budget, its first cell cloning the course from a local
stand-in for GitHub at tag ``v<version>``), and each must show as many figures as the book build shows
(``tests/notebooks/figures.json``, recorded in the repository by ``tools/nbval_outputs.py``) and never say
that stored results are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from colab_sim import MISSING_RESULTS, notebook_paths, simulate, version  # noqa: E402
from nbval_outputs import FIGURES  # noqa: E402


def test_every_chapter_has_a_recorded_figure_count():
    figures = json.loads(FIGURES.read_text())
    assert set(figures) == {p.stem for p in notebook_paths()}, "run `python tools/nbval_outputs.py figures`"
    assert all(isinstance(n, int) and n >= 0 for n in figures.values())


def test_the_missing_results_pattern_catches_what_the_chapters_print():
    for line in ("No stored runs here (on Colab, clone the repository).", "No stored policy here",
                 "budget: quick | stored results: not found"):
        assert MISSING_RESULTS.search(line), line
    assert not MISSING_RESULTS.search("budget: quick | stored results: /content/attention-drl-course/results")


def _first_cell_as_python(path: Path) -> str:
    return TransformerManager().transform_cell(nbformat.read(path, as_version=4).cells[0].source)


def test_the_first_cell_does_nothing_outside_colab(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPANION_RESULTS", raising=False)
    assert "google.colab" not in sys.modules

    def no_process(*args, **kwargs):
        raise AssertionError(f"the first cell started a process outside Colab: {args}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, no_process)
    monkeypatch.setattr(os, "system", no_process)
    for path in notebook_paths():
        environ, search_path = dict(os.environ), list(sys.path)
        exec(compile(_first_cell_as_python(path), path.name, "exec"), {})  # get_ipython() is never reached
        assert dict(os.environ) == environ and sys.path == search_path, path.name
        assert Path.cwd() == tmp_path and not any(tmp_path.iterdir()), path.name
        assert capfd.readouterr() == ("", ""), f"{path.name} prints outside Colab"


def test_the_first_cell_clones_the_release_tag():
    """The clone command itself (not a comment) names ``--branch v<version>``."""
    import ast

    for path in notebook_paths():
        calls = [node for node in ast.walk(ast.parse(_first_cell_as_python(path))) if isinstance(node, ast.Call)
                 and node.args and isinstance(node.args[0], ast.List)]
        clone = [ast.literal_eval(e) for c in calls for e in c.args[0].elts if isinstance(e, ast.Constant)]
        assert "clone" in clone and "--branch" in clone, path.name
        assert clone[clone.index("--branch") + 1] == f"v{version()}", path.name


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="the simulated Colab clones the course with git")
def test_chapters_on_simulated_colab_show_every_figure_of_the_book():
    report = simulate(out=ROOT / "_build" / "colab-sim")
    expected = json.loads(FIGURES.read_text())
    problems = []
    for stem, entry in report.items():
        if entry["error"]:
            problems.append(f"{stem} failed:\n{entry['error']}")
            continue
        if entry["figures"] != expected[stem]:
            problems.append(f"{stem}: {entry['figures']} figures on Colab, {expected[stem]} in the book")
        problems += [f"{stem}: {line!r}" for line in entry["missing"]]
    assert set(report) == set(expected)
    assert not problems, "\n".join(problems)
    # The clone the notebooks made is the tagged course, and the results they read are its own.
    content = json.loads((ROOT / "_build" / "colab-sim" / "report.json").read_text())["content"]
    clone = Path(content) / "attention-drl-course"
    tags = subprocess.run(["git", "-C", clone, "tag", "--points-at", "HEAD"], capture_output=True, text=True).stdout
    assert (clone / "results").is_dir() and tags.split()
