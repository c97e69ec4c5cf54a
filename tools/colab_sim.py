"""Run the chapters as Colab does, without Colab and without a network.

A reader who clicks "open in Colab" gets a fresh machine with no repository: only the notebook. Its
first cell (written by ``tools/sync_links.py``) then clones the course at the release tag, installs the
companion package from that clone, and points ``$COMPANION_RESULTS`` at the clone's ``results/``. This
script rebuilds that situation on one machine:

1. the package is built as a wheel and installed, with torch and a Jupyter kernel, in a fresh virtual
   environment (nothing of the repository's ``.venv``);
2. a local clone of the repository stands in for GitHub: it is tagged ``v<version>`` and the notebooks'
   ``$COMPANION_REPOSITORY`` points at it (``file://``), so the first cell's ``git clone`` and
   ``pip install`` run for real, from it;
3. each notebook is copied into an empty folder and executed there at the quick budget by the fresh
   environment's kernel, with ``google.colab`` importable (an empty stand-in), so the first cell takes
   its Colab branch;
4. the figures each chapter shows are counted, and every line saying that stored results are missing is
   collected.

    python tools/colab_sim.py                     # every chapter, report in _build/colab-sim/report.json
    python tools/colab_sim.py 06_darqn 07_sa_dqn  # some chapters

``tests/test_colab.py`` runs it and compares the counts with ``tests/notebooks/figures.json``, the figures
that the book build shows (recorded by ``tools/nbval_outputs.py record``). The executed notebooks are kept
in ``_build/colab-sim/executed/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbval_outputs
from nbval_outputs import count_figures

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "_build" / "colab-sim"
#: The torch build installed first in the fresh environment (as the Makefile does).
TORCH = os.environ.get("TORCH", "torch==2.13.0")
#: A line a chapter prints when it cannot find what the repository stores (results, policies, benchmarks).
MISSING_RESULTS = re.compile(r"no stored \w+ here|stored results: not found", re.IGNORECASE)
#: The cell put in front of each notebook: on Colab, ``google.colab`` is imported before any user cell.
COLAB_MARKER = "import google.colab  # simulated Colab (tools/colab_sim.py)"


def _run(cmd: list[str | Path], **kwargs) -> None:
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def version() -> str:
    """The package's version (imported late: the fresh environment that executes notebooks has no yaml)."""
    from sync_links import version as package_version

    return package_version()


def notebook_paths(stems: list[str] | None = None) -> list[Path]:
    """The chapters (all, or those named by stem)."""
    paths = nbval_outputs.notebook_paths()
    if stems:
        unknown = set(stems) - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"no such notebook: {', '.join(sorted(unknown))}")
        paths = [p for p in paths if p.stem in stems]
    return paths


def build_environment(out: Path) -> Path:
    """A fresh virtual environment holding the wheel, torch and a kernel; return its python."""
    wheels = out / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    # Built in pip's isolated build environment (setuptools from the registry), as a release would be.
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT])
    wheel = next(wheels.glob("attention_drl_companion-*.whl"))
    venv = out / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, TORCH])
    _run([*pip, wheel, "ipykernel", "ipywidgets", "nbclient", "nbformat"])  # Colab has ipywidgets (tqdm's bars)
    return python


def stand_in_for_github(out: Path) -> str:
    """A clone of this repository's HEAD tagged ``v<version>``: the address the notebooks clone from."""
    origin = out / "origin"
    shutil.rmtree(origin, ignore_errors=True)
    _run(["git", "clone", "--quiet", "--no-hardlinks", ROOT, origin])
    _run(["git", "-C", origin, "tag", "--force", f"v{version()}"], stdout=subprocess.DEVNULL)
    return origin.resolve().as_uri()


def fake_colab_module(out: Path) -> Path:
    """A folder whose ``google/colab`` package is empty (a namespace ``google``, so nothing is shadowed)."""
    folder = out / "fake-colab"
    (folder / "google" / "colab").mkdir(parents=True, exist_ok=True)
    (folder / "google" / "colab" / "__init__.py").write_text('"""A stand-in: only its presence matters."""\n')
    return folder


def output_text(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            parts.append(text if isinstance(text, str) else "".join(text))
    return "\n".join(parts)


def execute_here(notebook: Path, executed: Path, timeout: int) -> None:
    """Run in the fresh environment: execute ``notebook`` from the working directory, as on Colab."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(COLAB_MARKER))
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": os.getcwd()}})
        client.execute()
    finally:
        del nb.cells[0]
        nbformat.write(nb, executed)


def simulate(stems: list[str] | None = None, out: Path = DEFAULT_OUT, timeout: int = 900) -> dict[str, dict]:
    """Execute the chapters as on Colab; return ``{stem: {figures, missing, seconds, error}}`` and save it."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    python = build_environment(out)
    repository = stand_in_for_github(out)
    setup_seconds = time.time() - started
    # Colab's working directory, empty at the start and outside this repository: companion's results_dir()
    # looks for a results/ folder from the working directory upwards, and would find the repository's own.
    work = Path(tempfile.mkdtemp(prefix="colab-content-"))
    assert not [p for p in work.parents if (p / "results").is_dir()], f"{work} lies below a results/ folder"
    executed_dir = out / "executed"
    shutil.rmtree(executed_dir, ignore_errors=True)
    executed_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPANION_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(COMPANION_BUDGET="quick", COMPANION_REPOSITORY=repository, TQDM_DISABLE="1",
               PYTHONPATH=str(fake_colab_module(out)), PATH=f"{python.parent}{os.pathsep}{env.get('PATH', '')}")
    report: dict[str, dict] = {}
    for path in notebook_paths(stems):
        copy = work / path.name
        shutil.copy(path, copy)
        executed = executed_dir / path.name
        begin = time.time()
        result = subprocess.run([python, Path(__file__).resolve(), "--execute", copy, executed, str(timeout)],
                                cwd=work, env=env, capture_output=True, text=True)
        copy.unlink()
        entry: dict = {"seconds": round(time.time() - begin, 1), "error": None}
        if result.returncode != 0:
            entry["error"] = (result.stderr or result.stdout)[-3000:]
        if executed.exists():
            nb = json.loads(executed.read_text())
            entry["figures"] = count_figures(nb)
            entry["missing"] = [line.strip() for line in output_text(nb).splitlines() if MISSING_RESULTS.search(line)]
        report[path.stem] = entry
        print(f"{path.stem}: {entry.get('figures')} figures, {len(entry.get('missing', []))} missing-results lines, "
              f"{entry['seconds']} s{'' if entry['error'] is None else ', FAILED'}", flush=True)
    summary = {"setup_seconds": round(setup_seconds, 1), "version": version(), "content": str(work),
               "notebooks": report}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook stems (default: every chapter)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--execute", nargs=3, metavar=("NOTEBOOK", "EXECUTED", "TIMEOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.execute:  # inside the fresh environment
        notebook, executed, timeout = args.execute
        execute_here(Path(notebook), Path(executed), int(timeout))
        return
    report = simulate(args.notebooks or None, args.out)
    failed = [stem for stem, entry in report.items() if entry["error"] or entry.get("missing")]
    if failed:
        sys.exit(f"failed or missing results: {', '.join(failed)}")


if __name__ == "__main__":
    main()
