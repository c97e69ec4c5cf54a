"""Pages that open without errors in the browser console (tests/test_browser.py checks every page).

Two defects of the theme stack that Jupyter Book 1.x installs, fixed at page-rendering time:

- ``sphinx-thebe`` and ``sphinx-togglebutton`` register their inline configuration scripts twice, so
  each page declares ``const THEBE_JS_URL`` twice and the browser stops on a ``SyntaxError``. Identical
  scripts are kept once, in their first position.
- With no colour mode chosen yet (a reader's first visit, or a copy opened from disk), the PyData theme
  logs "Got invalid theme mode". ``default_mode`` gives it the theme's own default, ``auto``.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _script_key(script: Any) -> tuple:
    """What makes two script entries the same: their file name (``None`` and ``''`` alike: one registration
    passes each), inline body and attributes."""
    attributes = getattr(script, "attributes", {})
    filename = getattr(script, "filename", script) or ""
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _quiet(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen: set[tuple] = set()
        unique = []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                unique.append(script)
        scripts[:] = unique
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("html-page-context", _quiet, priority=900)  # after the themes have filled the context
    return {"parallel_read_safe": True, "parallel_write_safe": True}
