"""Keep the repository URL and the package version in one place each.

Sources of truth:
- the repository URL: ``repository.url`` in ``_config.yml`` (it drives the book's launch buttons);
- the version: ``__version__`` in ``companion/__init__.py``.

Copies that this script writes (``--check`` only reports them):
- the first cell of every notebook, which on Colab clones the course at tag ``v<version>`` and installs
  the companion from it;
- ``[project.urls] Repository`` in ``pyproject.toml``;
- the "Open in Colab" links in ``README.md``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALL_CELL_TAG = "colab-install"
#: The book hides the install cell (it does nothing outside Colab); Colab and downloads keep it.
INSTALL_CELL_TAGS = [INSTALL_CELL_TAG, "remove-cell"]


def repo_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    return config["repository"]["url"].rstrip("/")


def version() -> str:
    match = re.search(r'^__version__ = "([^"]+)"', (ROOT / "companion" / "__init__.py").read_text(), re.M)
    assert match, "companion/__init__.py must define __version__"
    return match.group(1)


def install_cell_source(url: str | None = None, ver: str | None = None) -> str:
    """The first cell of every notebook: on Colab, a shallow clone of the course at tag ``v<version>``
    (the package, the stored results and the trained policies, as the book was built from them), the
    package installed from it, and ``$COMPANION_RESULTS`` pointed at its ``results/``. Elsewhere it does
    nothing. ``$COMPANION_REPOSITORY`` replaces the repository's address (the simulated-Colab test
    points it at a local clone)."""
    url, ver = url or repo_url(), ver or version()
    return (
        "# On Colab: bring the course at the version this notebook was written for (the companion\n"
        "# package, the stored results and the trained policies). Elsewhere this cell does nothing:\n"
        "# follow the README (`make setup` installs the package into .venv).\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        '    course = os.path.abspath("attention-drl-course")\n'
        "    if not os.path.isdir(course):\n"
        "        repository = os.environ.get(\n"
        f'            "COMPANION_REPOSITORY", "{url}")\n'
        '        subprocess.run(["git", "-c", "advice.detachedHead=false", "clone",\n'
        f'                        "--quiet", "--depth", "1", "--branch", "v{ver}",\n'
        "                        repository, course], check=True)\n"
        "        %pip install --quiet {course}\n"
        '    os.environ["COMPANION_RESULTS"] = os.path.join(course, "results")'
    )


def colab_url(notebook: str, url: str | None = None) -> str:
    url = url or repo_url()
    return url.replace("https://github.com/", "https://colab.research.google.com/github/") + f"/blob/main/{notebook}"


def sync(check: bool) -> list[str]:
    """Bring every copy in line with the sources; return what was (or, with ``check``, would be) changed."""
    url, ver = repo_url(), version()
    stale: list[str] = []
    for path in sorted((ROOT / "notebooks").glob("[!.]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0] if nb.cells else None
        want = install_cell_source(url, ver)
        if first is None or INSTALL_CELL_TAG not in first.metadata.get("tags", []):
            stale.append(f"{path.relative_to(ROOT)}: first cell is not the tagged {INSTALL_CELL_TAG!r} cell")
            if not check:
                cell = nbformat.v4.new_code_cell(want, metadata={"tags": list(INSTALL_CELL_TAGS)})
                nb.cells.insert(0, cell)
                nbformat.write(nb, path)
        elif first.source != want or first.metadata.get("tags") != INSTALL_CELL_TAGS:
            stale.append(f"{path.relative_to(ROOT)}: install cell")
            if not check:
                first.source = want
                first.metadata["tags"] = list(INSTALL_CELL_TAGS)
                nbformat.write(nb, path)
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    new = re.sub(r'^Repository = ".*"$', f'Repository = "{url}"', text, flags=re.M)
    if new != text:
        stale.append("pyproject.toml: [project.urls] Repository")
        if not check:
            pyproject.write_text(new)
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(r"https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/main/",
                 colab_url("", url), text)
    if new != text:
        stale.append("README.md: Colab links")
        if not check:
            readme.write_text(new)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale copies and exit 1; change nothing")
    args = parser.parse_args()
    stale = sync(args.check)
    for line in stale:
        print(("stale: " if args.check else "updated: ") + line)
    if args.check and stale:
        sys.exit("run `make sync-links` to update them")


if __name__ == "__main__":
    main()
