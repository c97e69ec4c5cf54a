"""The book's API reference (book/api/, book/_ext/companion_api.py), checked without building the book.

The full build (`make book`, with -W -n) renders the pages; these tests check what can fail cheaply: that every
public module, class and function of the companion has an autodoc entry, that every back-link points at a page
of the table of contents, that the docstrings' citations name entries of the bibliography, and the text
transforms the extension applies to docstrings.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import companion_api as api  # noqa: E402

API_PAGES = sorted((ROOT / "book" / "api").glob("*.md"))


def _toc_files() -> list[str]:
    """Every file of _toc.yml, in order."""
    def walk(node: object) -> list[str]:
        if isinstance(node, dict):
            return ([node["file"]] if "file" in node else []) + [f for v in node.values() for f in walk(v)]
        if isinstance(node, list):
            return [f for item in node for f in walk(item)]
        return []

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"], *walk(toc["parts"])]


def _directives() -> list[tuple[str, str, dict[str, str], str]]:
    """``(directive, argument, options, page)`` for every ``.. auto*::`` and ``.. companion-*::`` of the pages."""
    found = []
    for page in API_PAGES:
        lines = page.read_text().splitlines()
        for index, line in enumerate(lines):
            match = re.match(r"\s*\.\. (auto\w+|companion-[\w-]+)::\s*(\S*)", line)
            if not match:
                continue
            options = {}
            for following in lines[index + 1:]:
                option = re.match(r"\s+:([\w-]+):\s*(.*)", following)
                if not option:
                    break
                options[option.group(1)] = option.group(2).strip()
            found.append((match.group(1), match.group(2), options, page.stem))
    return found


def _documented() -> tuple[dict[str, str], dict[str, str]]:
    """Modules and objects the pages document, each with the page that documents it: an ``automodule`` with
    members documents the public names of its module, less ``:exclude-members:``."""
    modules: dict[str, str] = {}
    objects: dict[str, str] = {}
    for directive, argument, options, page in _directives():
        if directive == "automodule":
            assert argument not in modules, f"{argument} is documented on {modules[argument]} and {page}"
            modules[argument] = page
            if "no-members" in options:
                continue
            excluded = {name.strip() for name in options.get("exclude-members", "").split(",") if name.strip()}
            module = importlib.import_module(argument)
            for name in api.module_public_names(argument):
                obj = getattr(module, name)
                if name not in excluded and api._is_documentable(obj):
                    qualified = f"{argument}.{name}"
                    assert qualified not in objects, f"{qualified} is documented twice"
                    objects[qualified] = page
        elif directive in ("autoclass", "autofunction", "autoexception"):
            objects[argument] = page
    return modules, objects


def test_every_public_module_class_and_function_has_an_entry_where_it_is_defined():
    modules, objects = _documented()
    assert sorted(modules) == api.public_modules()
    # Each object is documented once, under the module that defines it (so that `companion.x.Name`
    # references resolve): a module that re-exports a name excludes it, and a package lists its re-exports.
    assert sorted(objects) == sorted(api.public_objects())
    for directive, argument, options, _ in _directives():
        if directive == "automodule" and "exclude-members" in options:
            for name in options["exclude-members"].split(","):
                obj = getattr(importlib.import_module(argument), name.strip())
                assert obj.__module__ != argument, f"{argument}.{name} is defined there: document it"
                assert api.canonical_name(obj) in objects
    reexporting = {argument for directive, argument, _, _ in _directives() if directive == "companion-reexports"}
    for module_name in api.public_modules():
        if api.reexports(module_name):
            assert module_name in reexporting, f"{module_name} re-exports names: add `.. companion-reexports::`"


def test_public_data_is_documented():
    """A constant in a module's ``__all__`` needs a ``#:`` doc comment (autodoc skips undocumented data) or an
    ``autodata`` directive."""
    from sphinx.pycode import ModuleAnalyzer

    autodata = {argument for directive, argument, _, _ in _directives() if directive == "autodata"}
    for module_name in api.public_modules():
        analyzer = ModuleAnalyzer.for_module(module_name)
        analyzer.analyze()
        commented = {name for (_, name) in analyzer.attr_docs}
        module = importlib.import_module(module_name)
        for name in api.own_data(module_name):
            if getattr(module, name) is getattr(importlib.import_module("companion.budget"), name, None):
                continue  # `companion` re-exports the budget's constants, documented in companion.budget
            assert name in commented or f"{module_name}.{name}" in autodata, f"{module_name}.{name}: no doc comment"


def test_the_reference_is_a_part_of_the_toc_before_the_back_matter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    captions = [part["caption"] for part in toc["parts"]]
    assert captions.index("Reference") == captions.index("Back matter") - 1
    files = _toc_files()
    for page in API_PAGES:
        assert f"book/api/{page.stem}" in files, f"book/api/{page.name} is not in _toc.yml"


def test_the_config_enables_autodoc_napoleon_and_the_extension_offline():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    extensions = config["extra_extensions"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(extensions)
    assert "sphinx.ext.intersphinx" not in extensions  # nothing may be fetched at build time
    assert (ROOT / config["local_extensions"]["companion_api"] / "companion_api.py").is_file()


def test_every_object_links_back_to_pages_of_the_book():
    files = set(_toc_files())
    table = api.object_chapters(ROOT)
    assert sorted(table) == sorted(api.public_objects())
    for qualified, pages in table.items():
        assert pages, qualified
        assert len(set(pages)) == len(pages), qualified
        for page in pages:
            assert page in files, f"{qualified} links to {page}, which is not in _toc.yml"
    for module_name, pages in api.module_chapters(ROOT).items():
        assert pages and set(pages) <= files, module_name


def test_the_fallback_tables_name_real_modules_objects_and_pages():
    files = set(_toc_files())
    assert sorted(api.HOME) == api.public_modules(), "every public module needs a home page in HOME"
    assert set(api.HOME.values()) <= files
    assert set(api.HOME_OVERRIDES) <= set(api.public_objects())
    assert set(api.HOME_OVERRIDES.values()) <= files
    assert api.chapter_docnames(ROOT) == sorted(f for f in files if api.chapter_number(f) is not None)


@pytest.mark.parametrize("qualified, explains", [
    ("companion.agents.dqn.DQN", 2),  # imported by chapter 2
    ("companion.agents.drqn.DRQN", 2),  # chapter 2 trains "drqn" by name; chapter 6 imports it
    ("companion.agents.sadqn.SADQN", 7),  # chapter 4 reads "sadqn" runs, chapter 7 explains it
    ("companion.attention.TransformerBlock", 7),  # imported through companion.agents.sadqn's re-export
    ("companion.attention.EpisodicMemory", 4),  # attention.py is chapter 1's, the memory chapter 4's
    ("companion.agents.ppo.PPOHierarchicalMemoryConfig", 5),  # a config goes with its agent
    ("companion.buffers.ReplayBuffer", 2),  # no notebook imports it: its module's home
])
def test_the_explaining_chapter(qualified, explains):
    first = api.object_chapters(ROOT)[qualified][0]
    assert api.chapter_number(first) == explains


def test_notebook_use_reads_imports_mentions_and_agent_keys(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("Uses `companion.buffers.gae` and `make_env`; `DQN` is an acronym here."),
        nbformat.v4.new_code_cell("%matplotlib inline\nfrom companion.agents import DQN\nimport companion.tabular\n"
                                  "from companion.loops import on_policy\nrun = build('drqn')"),
    ])
    nbformat.write(notebook, tmp_path / "chapter.ipynb")
    use = api.notebook_use(tmp_path / "chapter.ipynb")
    assert use.imported == {"companion.agents.dqn.DQN"}
    assert use.mentioned == {"companion.buffers.gae", "companion.envs.make_env"}
    assert use.agents == {"companion.agents.drqn.DRQN"}
    assert {"companion.agents", "companion.tabular", "companion.loops.on_policy"} <= use.modules
    listing = api.chapter_listing(use)
    assert listing["companion.agents.dqn"] == ["companion.agents.dqn.DQN"]
    assert listing["companion.tabular"] == []


def test_back_link_text():
    assert api.back_link(["notebooks/02_dqn_drqn"]) == "**In the book:** :doc:`/notebooks/02_dqn_drqn`."
    assert api.back_link(["notebooks/02_dqn_drqn", "notebooks/06_darqn", "notebooks/07_sa_dqn"]) == (
        "**In the book:** :doc:`/notebooks/02_dqn_drqn`; also used in chapters "
        ":doc:`6 </notebooks/06_darqn>`, :doc:`7 </notebooks/07_sa_dqn>`.")


# --- citations ---------------------------------------------------------------------------------------------

BIB = api.read_bib(ROOT / "book" / "references.bib")


def _docstrings() -> list[tuple[str, str]]:
    """Every docstring of the public modules: modules, classes, functions, methods and properties."""
    found = []
    for module_name in api.public_modules():
        module = importlib.import_module(module_name)
        found.append((module_name, module.__doc__ or ""))
        for name, obj in vars(module).items():
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module_name:
                continue
            found.append((f"{module_name}.{name}", obj.__doc__ or ""))
            if inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if inspect.isfunction(member) or isinstance(member, property):
                        found.append((f"{module_name}.{name}.{attribute}", member.__doc__ or ""))
    return found


def test_every_citation_in_a_docstring_names_one_bibliography_entry():
    unresolved, cited = [], set()
    for name, doc in _docstrings():
        for text, key in api.cite_in_lines(inspect.cleandoc(doc).splitlines(), BIB):
            if key is None:
                unresolved.append(f"{name}: {text!r}")
            cited.add(key)
    assert not unresolved, "citations with no single entry in book/references.bib:\n" + "\n".join(unresolved)
    assert {"mnih2015human", "hausknecht2015deep", "sorokin2015deep", "vaswani2017attention"} <= cited


def test_citations_become_roles_outside_literals():
    lines = ["DQN (Mnih et al. 2015) and Double DQN (van Hasselt et al. 2016); DRQN: Hausknecht & Stone 2015.",
             "REINFORCE (Williams 1992), not ``Mnih et al. 2015`` in a literal, nor :func:`Lin 1992`.",
             "A2C (Huang et al. 2022, \"A2C is a special case of PPO\"), and Huang et al. 2022 alone.",
             "The formula::",
             "",
             "    y = r (Mnih et al. 2015)",
             "",
             "Chapter 2015 and CartPole 2000 are not citations."]
    found = api.cite_in_lines(lines, BIB)
    assert lines[0] == ("DQN (:cite:t:`mnih2015human`) and Double DQN (:cite:t:`vanhasselt2016deep`); "
                        "DRQN: :cite:t:`hausknecht2015deep`.")
    assert lines[1] == ("REINFORCE (:cite:t:`williams1992simple`), not ``Mnih et al. 2015`` in a literal, "
                        "nor :func:`Lin 1992`.")
    assert lines[2] == ('A2C (:cite:t:`huang2022a2c`, "A2C is a special case of PPO"), and Huang et al. 2022 '
                        "alone.")  # two entries by Huang et al. in 2022: the title tells them apart, or nothing
    assert lines[5] == "    y = r (Mnih et al. 2015)"
    assert lines[7] == "Chapter 2015 and CartPole 2000 are not citations."
    assert ("Huang et al. 2022", None) in found and ("Chapter 2015", None) in found


# --- docstring transforms ----------------------------------------------------------------------------------


def test_returns_sections_stay_prose():
    lines = ["Attend.", "", "Args:", "    x: input.", "", "Returns:", "    ``(output, weights)``: output ``(B, E)``;",
             "    weights ``(B, S)``.", "", "Raises:", "    ValueError: if empty."]
    api.prose_returns(lines)
    assert lines == ["Attend.", "", "Args:", "    x: input.", "", ":returns: ``(output, weights)``: output ``(B, E)``;",
                     "    weights ``(B, S)``.", "", "Raises:", "    ValueError: if empty."]


def test_hand_laid_sections_become_text_blocks():
    lines = ["The CLI.", "", "Commands:", "    train   train an agent", "    eval    evaluate one", "",
             "Examples:", "    >>> 1 + 1", "    2"]
    api.literal_sections(lines)
    assert lines == ["The CLI.", "", "Commands:", "", ".. code-block:: text", "", "    train   train an agent",
                     "    eval    evaluate one", "", "Examples:", "    >>> 1 + 1", "    2"]


def test_external_targets_never_match_the_companion():
    names = [*api.public_objects(), *api.public_modules(), "companion.records.UPDATE_LOG_EVERY"]
    for _, pattern in api.EXTERNAL_TARGETS:
        for name in names:
            for candidate in (name, name.rsplit(".", 1)[-1]):
                assert not re.fullmatch(pattern, candidate), f"{pattern!r} would silence {candidate}"
    assert any(re.fullmatch(p, "torch.Tensor") for _, p in api.EXTERNAL_TARGETS)


def test_private_bases_are_replaced_by_their_own_bases():
    from companion.buffers import SumTree

    bases = list(SumTree.__bases__)
    api._public_bases(None, "companion.buffers.SumTree", SumTree, None, bases)
    assert all(not b.__name__.startswith("_") for b in bases)
