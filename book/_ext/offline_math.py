"""Math that renders without a network: the book serves MathJax from its own static files.

Sphinx's ``sphinx.ext.mathjax`` loads MathJax from a CDN by default, so a downloaded copy of the book,
read on a train or behind a firewall, shows every formula as raw ``\\(...\\)`` text. This extension
copies MathJax 3 into ``_static/mathjax`` and points ``mathjax_path`` at it. MathJax itself comes from
a package registry at a pinned version: the PyPI package ``sphinx-mathjax-offline`` (installed by the
set-up with the ``book`` extra) ships MathJax 3.2.2, of which only the files are used here.

The SVG output (``tex-svg-full.js``) is chosen over CommonHTML: it draws glyphs as paths and loads no
web fonts, which browsers refuse to load from ``file://`` pages, and the ``-full`` build carries every
TeX extension, so nothing is fetched lazily.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

#: The MathJax component the pages load, relative to ``_static``.
MATHJAX_ENTRY = "mathjax/tex-svg-full.js"
#: The package that ships MathJax's files (its ``static/mathjax`` folder).
MATHJAX_PACKAGE = "sphinx-mathjax-offline"


def mathjax_static_dir() -> Path:
    """The folder holding ``mathjax/`` as installed from PyPI; an error that says what to install if missing."""
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or spec.origin is None:
        raise ExtensionError(f"offline math needs the package {MATHJAX_PACKAGE!r}: "
                             "`make setup` installs it (pip install -e '.[book]')")
    static = Path(spec.origin).parent / "static"
    if not (static / MATHJAX_ENTRY).is_file():
        raise ExtensionError(f"{static / MATHJAX_ENTRY} is missing: reinstall {MATHJAX_PACKAGE}")
    return static


def _use_local_mathjax(app: Sphinx, config: Config) -> None:
    config.html_static_path = [*config.html_static_path, str(mathjax_static_dir())]
    config.mathjax_path = MATHJAX_ENTRY


def setup(app: Sphinx) -> dict[str, object]:
    app.setup_extension("sphinx.ext.mathjax")
    app.connect("config-inited", _use_local_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
