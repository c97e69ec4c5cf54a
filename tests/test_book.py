"""The book's configuration, and proof that a failing notebook cell fails `make book`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_config_makes_errors_fatal_and_caches_execution():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    execute = config["execute"]
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False
    assert execute["execute_notebooks"] == "cache" and execute["timeout"] > 0
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["url"].startswith("https://github.com/")
    for bib in config["bibtex_bibfiles"]:
        assert (ROOT / bib).exists()
    makefile = (ROOT / "Makefile").read_text()
    assert "-W -n --keep-going" in makefile


def test_math_is_served_from_the_book_itself():
    """No CDN: MathJax comes from a registry package and is copied into the book's static files."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"]["offline_math"] == "book/_ext"
    assert "mathjax_path" not in config["sphinx"].get("config", {})
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        import offline_math
    finally:
        sys.path.remove(str(ROOT / "book" / "_ext"))
    entry = offline_math.mathjax_static_dir() / offline_math.MATHJAX_ENTRY
    assert entry.is_file() and entry.stat().st_size > 1_000_000  # the full build: every TeX extension inside
    assert not offline_math.MATHJAX_ENTRY.startswith(("http:", "https:", "//"))


def _scratch_book(tmp_path: Path, failing: bool) -> Path:
    book = tmp_path / ("bad" if failing else "good")
    (book / "book").mkdir(parents=True)
    (book / "notebooks").mkdir()
    shutil.copy(ROOT / "_config.yml", book / "_config.yml")  # the real configuration
    shutil.copy(ROOT / "book" / "references.bib", book / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_ext", book / "book" / "_ext")  # the book's local Sphinx extensions
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/page\n")
    (book / "book" / "intro.md").write_text("# Scratch\n\nA scratch book.\n")
    code = 'raise RuntimeError("deliberate failure")' if failing else "print(1 + 1)"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Page"), nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book / "notebooks" / "page.ipynb")
    return book


def _make_book(book: Path) -> subprocess.CompletedProcess:
    stamp = book / "installed"  # stands in for .venv/.installed: use the interpreter running the tests
    stamp.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "book", f"BOOK_DIR={book}", f"BOOK_OUT={book / 'out'}",
         f"BIN={Path(sys.executable).parent}", f"STAMP={stamp}"],
        capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.mark.slow
def test_make_book_fails_on_a_failing_cell_and_passes_without_it(tmp_path):
    good = _make_book(_scratch_book(tmp_path, failing=False))
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    assert (tmp_path / "good" / "out" / "_build" / "html" / "notebooks" / "page.html").exists()
    bad = _make_book(_scratch_book(tmp_path, failing=True))
    assert bad.returncode != 0, "a notebook with a failing cell was built without error"
    assert "deliberate failure" in bad.stdout + bad.stderr


def test_workflows_run_ci_on_pull_requests_and_publish_tagged_releases():
    workflows = ROOT / ".github" / "workflows"
    ci = yaml.safe_load((workflows / "ci.yml").read_text())
    assert "pull_request" in ci[True]  # YAML reads the key `on` as True
    assert any("bash .ci/run" in step.get("run", "") for step in ci["jobs"]["ci"]["steps"])
    publish = yaml.safe_load((workflows / "publish.yml").read_text())
    assert publish[True]["push"]["tags"] == ["v*"]
    steps = publish["jobs"]["build"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "companion/__init__.py" in runs and 'test "${GITHUB_REF_NAME}" = "v${version}"' in runs
    assert "sync_links.py --check" in runs and "make book" in runs
    assert set(publish[True]["push"]) == {"branches", "tags"}  # no paths filter that would skip a release
    assert publish["permissions"]["pages"] == "write" and publish["permissions"]["id-token"] == "write"
    tag_step = next(step for step in steps if "GITHUB_REF_NAME" in step.get("run", ""))
    assert tag_step["if"] == "startsWith(github.ref, 'refs/tags/v')"  # runs on every release tag
    assert not any(step.get("continue-on-error") for step in steps), "a failing step must stop the release"
    upload = next(step for step in steps if step.get("with", {}).get("path") == "_build/html")
    assert upload["uses"].startswith("actions/upload-pages-artifact@")
    deploy = publish["jobs"]["deploy"]
    assert deploy["needs"] in ("build", ["build"]) and "if" not in deploy
    assert deploy["environment"]["name"] == "github-pages"
    assert any(step.get("uses", "").startswith("actions/deploy-pages@") for step in deploy["steps"])
    # CI's script runs every check, and the browser test may not skip itself there.
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci_run
    for command in ("make test", "make lint", "make book-executed", "COMPANION_REQUIRE_BROWSER=1 make test-browser"):
        assert f"\n{command}\n" in ci_run, command


def test_the_tag_check_rejects_a_tag_that_is_not_the_version(tmp_path):
    """The publish workflow's tag step, run as the runner would, on a matching and on a stale tag."""
    publish = yaml.safe_load((ROOT / ".github" / "workflows" / "publish.yml").read_text())
    step = next(s for s in publish["jobs"]["build"]["steps"] if "GITHUB_REF_NAME" in s.get("run", ""))
    sys.path.insert(0, str(ROOT / "tools"))
    from sync_links import version

    for tag, ok in ((f"v{version()}", True), ("v0.0.0-stale", False)):
        env = {**os.environ, "GITHUB_REF_NAME": tag}
        result = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=env, capture_output=True, text=True)
        assert (result.returncode == 0) == ok, (tag, result.stdout, result.stderr)
