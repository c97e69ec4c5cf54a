"""The book's API reference (``book/api/``), tied to its chapters.

Sphinx's autodoc renders the companion's docstrings on the pages of ``book/api/``; napoleon reads their
``Args:`` and ``Raises:`` sections. This extension ties the reference to the rest of the book:

- **Back-links.** Every public class and function (and every module) ends with "In the book:", a link to the
  chapter that explains it, then the other chapters that use it.
- **Chapter links.** Every chapter page ends with a section, "Companion code used in this chapter", listing
  what its notebook takes from ``companion``, each a cross-reference into the API pages. The notebooks are not
  edited: the section is added to the chapter's document tree when Sphinx reads it.
- **Citations.** A docstring that cites a paper in prose, "Mnih et al. 2015", "Hausknecht & Stone 2015" or
  "Williams 1992", shows on the API page as a citation linked to the bibliography (:data:`CITATION_ROLE`); where
  two entries share authors and year, a quoted title that follows tells them apart. The docstrings stay plain
  prose for ``help()``.

Where a chapter **uses** an object (:func:`notebook_use`): its notebook's code imports it (``from companion.x
import Name``, also through a package that re-exports it); its markdown names it as inline code, by its full
name (``companion.x.Name``) or by a short name that only one public object has and that is no plain word or
acronym (``make_env``, not ``DQN``); or, for an agent, its code names the agent's key in
``companion.agents.AGENTS`` as a string (``"drqn"``: the chapter trains or reads runs of that agent). The
chapter that **explains** an object (:func:`object_chapters`) is the home of its module (:data:`HOME`,
written from the modules' docstrings, which say "book chapter N") when that chapter uses it; otherwise the
first chapter that uses it; for an object that no notebook uses, the home. :data:`HOME_OVERRIDES` gives its own
home to an object whose module spans chapters, and an agent's config goes with its agent.

The docstrings are read as the companion writes them, which is not always napoleon's Google style: its
``Returns:`` sections are prose (the type hints give the types), attribute and property docstrings such as
"the training loop this agent learns in: ..." are not "type: description", and the CLI's "Commands:" and
"Examples:" are laid out by hand. Docstrings inherited from other packages (gymnasium's ``Wrapper.reset``) are
left out, and "Bases:" skips private classes. A reference that the Python domain cannot find is resolved as
Python resolves the name, through the module's imports and the class's bases, to where the object is
documented (:func:`_resolve_like_python`). What stays unresolved is reported by ``-n``, except the outside
names of :data:`EXTERNAL_TARGETS`.

Directives for the reference pages: ``companion-modules`` (the table of modules), ``companion-registry`` (a
registry's names and what they name) and ``companion-reexports`` (the names a module re-exports, linked to where
they are documented).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective

PACKAGE = "companion"
#: The chapters: one notebook each, named ``NN_title.ipynb``, chapter ``NN``.
CHAPTER_GLOB = "notebooks/[0-9][0-9]_*.ipynb"
#: The command line is explained on this page, not in a chapter.
HOW_TO_RUN = "book/how_to_run"
#: The folder of the reference pages; their docnames start with it.
API_DIR = "book/api"

#: Each module's home: the page (a chapter's docname) its docstring names, "book chapter N".
HOME: dict[str, str] = {
    "companion": "notebooks/00_setup",
    "companion.__main__": HOW_TO_RUN,
    "companion.budget": "notebooks/00_setup",
    "companion.utils": "notebooks/00_setup",
    "companion.check": "notebooks/00_setup",
    "companion.attention": "notebooks/01_attention",
    "companion.tasks": "notebooks/01_attention",
    "companion.cost": "notebooks/01_attention",
    "companion.exercises": "notebooks/01_attention",
    "companion.networks": "notebooks/02_dqn_drqn",
    "companion.agents": "notebooks/02_dqn_drqn",
    "companion.agents.base": "notebooks/02_dqn_drqn",
    "companion.agents.dqn": "notebooks/02_dqn_drqn",
    "companion.agents.drqn": "notebooks/02_dqn_drqn",
    "companion.agents.actor_critic": "notebooks/03_attention_critic",
    "companion.agents.ppo": "notebooks/03_attention_critic",
    "companion.agents.nec": "notebooks/04_attention_memory",
    "companion.agents.darqn": "notebooks/06_darqn",
    "companion.agents.sadqn": "notebooks/07_sa_dqn",
    "companion.train": "notebooks/02_dqn_drqn",
    "companion.loops": "notebooks/02_dqn_drqn",
    "companion.loops.base": "notebooks/02_dqn_drqn",
    "companion.loops.off_policy": "notebooks/02_dqn_drqn",
    "companion.loops.on_policy": "notebooks/03_attention_critic",
    "companion.records": "notebooks/02_dqn_drqn",
    "companion.sweep": HOW_TO_RUN,
    "companion.plots": "notebooks/02_dqn_drqn",
    "companion.buffers": "notebooks/02_dqn_drqn",
    "companion.envs": "notebooks/02_dqn_drqn",
    "companion.memory_tasks": "notebooks/04_attention_memory",
    "companion.tabular": "notebooks/03_attention_critic",
    "companion.value_mixing": "notebooks/03_attention_critic",
    "companion.critic_probe": "notebooks/03_attention_critic",
    "companion.memory_update": "notebooks/04_attention_memory",
    "companion.velocity_probe": "notebooks/07_sa_dqn",
    "companion.viz": "notebooks/06_darqn",
    "companion.compare": "notebooks/08_comparisons",
}

#: Objects whose module spans chapters, each with the home its module's docstring gives it.
HOME_OVERRIDES: dict[str, str] = {
    "companion.tabular.q_learning": "notebooks/02_dqn_drqn",  # "Q-learning (book chapter 2)"
    "companion.attention.MemoryCache": "notebooks/04_attention_memory",  # what EpisodicMemory keeps
    "companion.attention.HierarchicalWeights": "notebooks/05_hierarchical_attention",
    "companion.attention.ChunkCache": "notebooks/05_hierarchical_attention",  # what HierarchicalMemory keeps
    "companion.envs.EpisodeReplay": "notebooks/03_attention_critic",  # "the on-policy loop of chapter 3"
    "companion.envs.make_vec_env": "notebooks/03_attention_critic",  # the vector envs of on-policy learning
    "companion.envs.MinAtarObservation": "notebooks/06_darqn",  # MinAtar's agents start in chapter 6
    "companion.networks.MinAtarCNN": "notebooks/06_darqn",
    "companion.records.save_benchmark": "notebooks/03_attention_critic",  # the first benchmark a chapter reads
    "companion.buffers.Rollout": "notebooks/03_attention_critic",  # "the rollouts of on-policy learning (ch. 3)"
    "companion.buffers.gae": "notebooks/03_attention_critic",
    "companion.buffers.PrioritizedReplayBuffer": "notebooks/04_attention_memory",  # "(book chapter 4)"
    "companion.buffers.PrioritizedSequenceReplayBuffer": "notebooks/04_attention_memory",
    "companion.buffers.SumTree": "notebooks/04_attention_memory",
    "companion.buffers.MinTree": "notebooks/04_attention_memory",
    "companion.buffers.window_td_error": "notebooks/04_attention_memory",
    "companion.networks.LocationCNN": "notebooks/06_darqn",  # "(DARQN, chapter 6; the entity SA-DQN, chapter 7)"
    "companion.viz.hierarchical_reads": "notebooks/05_hierarchical_attention",  # "Chapter 5: ..."
    "companion.viz.plot_two_level": "notebooks/05_hierarchical_attention",
    "companion.viz.history_matrix": "notebooks/07_sa_dqn",  # "Chapter 7: ..."
    "companion.viz.plot_history_attention": "notebooks/07_sa_dqn",
    "companion.viz.attention_by_lag": "notebooks/07_sa_dqn",
    "companion.viz.entity_heat": "notebooks/07_sa_dqn",
    "companion.viz.entity_panel": "notebooks/07_sa_dqn",
}

#: References to other packages' objects, which nitpicky mode cannot resolve without intersphinx (nothing is
#: fetched at build time): the libraries the annotations and docstrings name, the standard library's modules
#: they use, and ``Tensor`` as a named tuple's string annotation shows it. Only outside names: a reference to
#: the companion's own objects must resolve (tests/test_api_reference.py checks that none of these match one).
EXTERNAL_TARGETS: tuple[tuple[str, str], ...] = (
    (r"py:.*", r"(torch|numpy|gymnasium|matplotlib)(\..+)?"),
    (r"py:.*", r"(typing|collections\.abc|abc|argparse|pathlib|subprocess)\..+"),
    (r"py:class", r"Tensor"),
)

#: The sphinxcontrib-bibtex role a recognised prose citation becomes: "Mnih et al. [2015]", linked.
CITATION_ROLE = "cite:t"

# "Mnih et al. 2015", "van Hasselt et al. 2016", "Hausknecht & Stone 2015", "Williams 1992".
_SURNAME = r"(?:(?:van|von|de|der|den|le|la|du) )?[A-Z][A-Za-z'\-]+"
_CITATION = re.compile(
    rf"(?P<first>{_SURNAME})(?P<rest> et al\.| (?:&|and) (?P<second>{_SURNAME}))?,? (?P<year>(?:19|20)\d\d)\b"
    r"(?P<title>,? \(?\"[^\"]+\")?"
)
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]*`_?|:[\w:+-]+:`[^`]*`)")


# --- the companion's public objects ------------------------------------------------------------------------


def public_modules() -> list[str]:
    """Every public module of the package: names without a leading ``_``, and ``companion.__main__`` (the CLI)."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        last = info.name.rsplit(".", 1)[1]
        if not last.startswith("_") or last == "__main__":
            names.append(info.name)
    return sorted(names)


def _is_documentable(obj: object) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj)


def canonical_name(obj: object) -> str:
    """``module.qualname`` of the place a class or function is defined (a re-export names the same object)."""
    return f"{obj.__module__}.{obj.__qualname__}"


def module_public_names(module_name: str) -> list[str]:
    """The public names of a module: its ``__all__`` where defined, otherwise the names without a leading
    ``_`` of the classes and functions it defines (not those it imports)."""
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return list(exported)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and _is_documentable(obj) and obj.__module__ == module_name]


@cache
def public_objects() -> dict[str, object]:
    """Every public class and function of the package by canonical name, each once (re-exports included once,
    under the module that defines them)."""
    found: dict[str, object] = {}
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in module_public_names(module_name):
            obj = getattr(module, name)
            if _is_documentable(obj) and obj.__module__.startswith(PACKAGE):
                found.setdefault(canonical_name(obj), obj)
    return found


def reexports(module_name: str) -> list[tuple[str, object]]:
    """The public names of a module that belong to another module: ``(name, object)`` pairs."""
    module = importlib.import_module(module_name)
    pairs = []
    for name in module_public_names(module_name):
        obj = getattr(module, name)
        if _is_documentable(obj) and obj.__module__ != module_name:
            pairs.append((name, obj))
    return pairs


def own_data(module_name: str) -> list[str]:
    """The public names of a module that are data (constants, registries), not classes or functions."""
    module = importlib.import_module(module_name)
    return [name for name in module_public_names(module_name)
            if not _is_documentable(getattr(module, name)) and not inspect.ismodule(getattr(module, name))]


def type_variables() -> list[str]:
    """The package's type variables (``T = TypeVar("T")``), which annotations show but nothing documents."""
    names = []
    for module_name in public_modules():
        for name, obj in vars(importlib.import_module(module_name)).items():
            if isinstance(obj, typing.TypeVar):
                names.append(f"{module_name}.{name}")
    return names


# --- where the chapters use it ------------------------------------------------------------------------------


def chapter_docnames(root: Path) -> list[str]:
    """The chapters' docnames, ``notebooks/NN_title``, in chapter order."""
    return sorted(str(path.relative_to(root).with_suffix("")) for path in root.glob(CHAPTER_GLOB))


def chapter_number(docname: str) -> int | None:
    """``NN`` of ``notebooks/NN_title``; None for a page that is not a chapter."""
    match = re.fullmatch(r"notebooks/(\d\d)_\w+", docname)
    return int(match.group(1)) if match else None


@dataclass
class ChapterUse:
    """What one chapter's notebook uses from the package, by canonical name."""

    imported: set[str] = field(default_factory=set)  # objects its code imports
    modules: set[str] = field(default_factory=set)  # modules its code imports from, or imports
    mentioned: set[str] = field(default_factory=set)  # objects its markdown names
    agents: set[str] = field(default_factory=set)  # agent classes whose AGENTS key its code names

    def objects(self) -> set[str]:
        return self.imported | self.mentioned | self.agents


def _code_tree(source: str) -> ast.Module | None:
    # IPython's magics and shell escapes are not Python: blank them out, keeping line numbers.
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _resolve(dotted: str) -> tuple[str | None, object | None]:
    """The module and object a dotted ``companion...`` name refers to: the longest importable module prefix,
    then attributes. ``(module, None)`` for a module, ``(None, None)`` for nothing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute, None)
            if obj is None:
                return None, None
        if isinstance(obj, types.ModuleType):
            return obj.__name__, None
        return module_name, obj
    return None, None


def _unique_short_names() -> dict[str, str]:
    """Short names that one public object alone has, and are identifiers rather than words or acronyms
    (``make_env``, ``MinAtarCNN``; not ``DQN`` or ``run``): a markdown ```make_env``` names it."""
    by_short: dict[str, list[str]] = {}
    for qualified in public_objects():
        by_short.setdefault(qualified.rsplit(".", 1)[1], []).append(qualified)
    return {short: names[0] for short, names in by_short.items()
            if len(names) == 1 and ("_" in short or re.search(r"[a-z][A-Z]", short))}


def _agent_keys() -> dict[str, str]:
    agents = importlib.import_module(f"{PACKAGE}.agents")
    return {key: canonical_name(cls) for key, cls in agents.AGENTS.items()}


def notebook_use(path: Path) -> ChapterUse:
    """What the notebook at ``path`` uses from the package (see the module's docstring)."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    use = ChapterUse()
    public = public_objects()
    short_names = _unique_short_names()
    agent_keys = _agent_keys()
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "code":
            tree = _code_tree(source)
            if tree is None:
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
                    use.modules.add(node.module)
                    for alias in node.names:
                        module_name, obj = _resolve(f"{node.module}.{alias.name}")
                        if obj is not None and _is_documentable(obj) and canonical_name(obj) in public:
                            use.imported.add(canonical_name(obj))
                        elif obj is None and module_name is not None:
                            use.modules.add(module_name)
                elif isinstance(node, ast.Import):
                    use.modules.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in agent_keys:
                    use.agents.add(agent_keys[node.value])
        elif cell.get("cell_type") == "markdown":
            for literal in re.findall(r"`([^`\n]+)`", source):
                name = literal.strip().rstrip("()")
                if name.startswith(PACKAGE + "."):
                    _, obj = _resolve(name)
                    if obj is not None and _is_documentable(obj) and canonical_name(obj) in public:
                        use.mentioned.add(canonical_name(obj))
                elif name in short_names:
                    use.mentioned.add(short_names[name])
    return use


@cache
def chapter_uses(root: Path) -> dict[str, ChapterUse]:
    """What each chapter uses, by chapter docname, in chapter order."""
    return {docname: notebook_use(root / f"{docname}.ipynb") for docname in chapter_docnames(root)}


def home(qualified: str) -> str:
    """The page that should explain an object or module when no notebook says otherwise."""
    if qualified in HOME_OVERRIDES:
        return HOME_OVERRIDES[qualified]
    module = qualified if qualified in HOME else qualified.rsplit(".", 1)[0]
    while module not in HOME and "." in module:
        module = module.rsplit(".", 1)[0]
    return HOME[module]


def _ordered(docnames: Iterable[str], first: str) -> list[str]:
    rest = sorted(set(docnames) - {first}, key=lambda d: (chapter_number(d) is None, chapter_number(d) or 0, d))
    return [first, *rest]


@cache
def object_chapters(root: Path) -> dict[str, list[str]]:
    """For each public class and function, the pages that use it: the one that explains it first."""
    uses = chapter_uses(root)
    table = {}
    for qualified in public_objects():
        using = [docname for docname, use in uses.items() if qualified in use.objects()]
        own = home(qualified)
        explains = own if own in using or not using else using[0]
        table[qualified] = _ordered(using, explains)
    # An agent's config, which no notebook names, is explained with its agent.
    for qualified, obj in public_objects().items():
        config = getattr(obj, "Config", None)
        if inspect.isclass(obj) and config is not None and inspect.isclass(config):
            name = canonical_name(config)
            if name in table and not any(name in use.objects() for use in uses.values()):
                table[name] = table[qualified][:1]
    return table


@cache
def module_chapters(root: Path) -> dict[str, list[str]]:
    """For each public module, its home page first, then the chapters that import from it."""
    uses = chapter_uses(root)
    table = {}
    for module_name in public_modules():
        using = [docname for docname, use in uses.items()
                 if module_name in use.modules or any(o.startswith(module_name + ".") for o in use.imported)]
        table[module_name] = _ordered(using, home(module_name))
    return table


def back_link(docnames: list[str]) -> str:
    """The reST line "In the book:" with links to the pages (the first explains, the others use)."""
    first, *others = docnames
    line = f"**In the book:** :doc:`/{first}`"
    numbered = [(chapter_number(d), d) for d in others]
    if numbered:
        links = ", ".join(f":doc:`{n} </{d}>`" if n is not None else f":doc:`/{d}`" for n, d in numbered)
        line += f"; also used in chapter{'s' if len(numbered) > 1 else ''} {links}"
    return line + "."


# --- citations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BibEntry:
    key: str
    surnames: tuple[str, ...]
    year: str
    title: str


def _plain(text: str) -> str:
    """BibTeX text as prose writes it: no braces, no accent commands (``Onta{\\~n}{\\'o}n`` -> ``Ontanon``)."""
    return re.sub(r"\\[`'^\"~=.]|\\[a-zA-Z]+ ?|[{}]", "", text)


def read_bib(path: Path) -> list[BibEntry]:
    """The entries of a BibTeX file, with the authors' surnames as prose writes them."""
    from pybtex.database import parse_file

    entries = []
    for key, entry in parse_file(str(path)).entries.items():
        people = entry.persons.get("author", []) or entry.persons.get("editor", [])
        surnames = tuple(_plain(" ".join(p.last_names)) for p in people if " ".join(p.last_names) != "others")
        entries.append(BibEntry(key, surnames, entry.fields.get("year", ""), _plain(entry.fields.get("title", ""))))
    return entries


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def match_citation(match: re.Match[str], entries: list[BibEntry]) -> BibEntry | None:
    """The one entry a prose citation names, or None (none, or several that its text cannot tell apart)."""
    first = match["first"].split(" ")[-1]
    candidates = [e for e in entries if e.year == match["year"] and e.surnames and e.surnames[0] == first]
    if match["second"]:
        second = match["second"].split(" ")[-1]
        candidates = [e for e in candidates if len(e.surnames) == 2 and e.surnames[1] == second]
    elif match["rest"] is None:
        candidates = [e for e in candidates if len(e.surnames) == 1]
    if len(candidates) > 1 and match["title"]:
        words = _words(match["title"])
        candidates = [e for e in candidates if words and words <= _words(e.title)]
    return candidates[0] if len(candidates) == 1 else None


def _outside_literals(line: str) -> Iterator[tuple[bool, str]]:
    """``(is_prose, text)`` pieces of a line: inline literals and roles are not prose."""
    position = 0
    for literal in _INLINE_LITERAL.finditer(line):
        yield True, line[position:literal.start()]
        yield False, literal.group(0)
        position = literal.end()
    yield True, line[position:]


def prose_lines(lines: list[str]) -> Iterator[int]:
    """Indices of the reST lines that are prose: not in a literal block (after ``::``), a directive's body, or
    a doctest."""
    block_indent: int | None = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if stripped.startswith((">>>", "...")):
            continue
        if stripped.endswith("::") or stripped.startswith(".. "):
            block_indent = indent
            if stripped.startswith(".. "):
                continue
        yield index


def cite_in_lines(lines: list[str], entries: list[BibEntry]) -> list[tuple[str, str | None]]:
    """Turn the prose citations of reST ``lines`` into citation roles, in place. Returns each citation found:
    ``(its text, the key it became or None)``."""
    found: list[tuple[str, str | None]] = []

    def replace(match: re.Match[str]) -> str:
        entry = match_citation(match, entries)
        text = match.string[match.start():match.end("year")]
        found.append((text, entry.key if entry else None))
        if entry is None:
            return match.group(0)
        return f":{CITATION_ROLE}:`{entry.key}`" + (match["title"] or "")

    for index in prose_lines(lines):
        lines[index] = "".join(_CITATION.sub(replace, text) if prose else text
                               for prose, text in _outside_literals(lines[index]))
    return found


# --- Sphinx ------------------------------------------------------------------------------------------------


def _root(app: Sphinx) -> Path:
    return Path(app.srcdir)


def _bib_entries(app: Sphinx) -> list[BibEntry]:
    if not hasattr(app, "_companion_bib"):
        files = getattr(app.config, "bibtex_bibfiles", None) or []
        app._companion_bib = [e for f in files for e in read_bib(_root(app) / f)]  # type: ignore[attr-defined]
    return app._companion_bib  # type: ignore[attr-defined]


_PROSE_SECTION = re.compile(r"^(?P<indent>\s*)(?P<section>Returns|Yields):\s*$")
_SAVED_PROSE: dict[int, list[str]] = {}


def prose_returns(lines: list[str]) -> None:
    """Turn Google-style ``Returns:`` and ``Yields:`` sections into ``:returns:`` fields, in place, before
    napoleon reads them. The companion's type hints give the types; its Returns sections are prose, often
    "``(output, weights)``: output ``(B, L, E)`` ...", which napoleon would split at the colon into a type."""
    index = 0
    while index < len(lines):
        match = _PROSE_SECTION.match(lines[index])
        body_start = index + 1
        if match is None or body_start >= len(lines) or not lines[body_start].strip():
            index += 1
            continue
        indent = len(match["indent"])
        end = body_start
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        field = "returns" if match["section"] == "Returns" else "yields"
        body = lines[body_start:end]
        lines[index:end] = [f"{match['indent']}:{field}: {body[0].strip()}", *body[1:]]
        index += 1


#: Google-style sections napoleon turns into fields or admonitions; "Examples" is code unless it is a doctest.
_NAPOLEON_SECTIONS = frozenset({"Args", "Arguments", "Parameters", "Params", "Returns", "Return", "Raises", "Raise",
                                "Yields", "Yield", "Attributes", "Note", "Notes", "Warning", "Warnings", "Warns",
                                "Todo", "References", "Methods", "Receives", "Receive", "Caution", "Danger",
                                "Error", "Hint", "Important", "Tip", "Seealso"})
_ONE_WORD_SECTION = re.compile(r"^(?P<indent>\s*)(?P<word>[A-Z][a-z]+):\s*$")


def literal_sections(lines: list[str]) -> None:
    """Turn one-word sections that hold text laid out by hand into literal blocks, in place: the CLI's
    "Commands:" table and its "Examples:" command lines (an "Examples:" section with a doctest stays napoleon's).
    The body becomes a plain-text code block, so the page shows it as the docstring lays it out."""
    index = 0
    while index < len(lines) - 1:
        match = _ONE_WORD_SECTION.match(lines[index])
        index += 1
        if match is None or match["word"] in _NAPOLEON_SECTIONS:
            continue
        indent = len(match["indent"])
        body = []
        for following in lines[index:]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        doctest = any(b.lstrip().startswith(">>>") for b in body)
        if not any(b.strip() for b in body) or (match["word"] in ("Example", "Examples") and doctest):
            continue
        lines[index:index] = ["", f"{match['indent']}.. code-block:: text"] + ([""] if body[0].strip() else [])


def _before_napoleon(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    """Docstrings as the companion writes them, before napoleon reads them: prose Returns sections; and
    attribute, data and property docstrings kept as they are (napoleon would read "the loop: ..." as a type)."""
    if what in ("attribute", "data", "property"):
        _SAVED_PROSE[id(lines)] = list(lines)
    else:
        literal_sections(lines)
        prose_returns(lines)


def _after_napoleon(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    saved = _SAVED_PROSE.pop(id(lines), None)
    if saved is not None:
        lines[:] = saved


def docstring_source(name: str) -> type | None:
    """The class whose definition of a method or property gives its docstring (autodoc inherits a missing one
    from the first class along the MRO that has one), for ``name`` = ``module.Class.attribute``."""
    owner_name, _, attribute = name.rpartition(".")
    _, owner = _resolve(owner_name)
    if not inspect.isclass(owner):
        return None
    for klass in owner.__mro__:
        member = vars(klass).get(attribute)
        if member is not None and getattr(member, "__doc__", None):
            return klass
    return None


def _inherited_from_outside(what: str, name: str) -> bool:
    """Whether a method's docstring is inherited from a class outside the package (gymnasium's
    ``Wrapper.reset``): written for another reference, with cross-references that cannot resolve here."""
    if what not in ("method", "property"):
        return False
    source = docstring_source(name)
    return source is not None and not source.__module__.startswith(PACKAGE)


def _process_docstring(app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]) -> None:
    # Docstrings that say nothing of the companion: inherited from another package, or a named tuple's
    # "Alias for field number 0".
    if _inherited_from_outside(what, name) or re.fullmatch(r"Alias for field number \d+", " ".join(lines).strip()):
        lines.clear()
        return
    cite_in_lines(lines, _bib_entries(app))
    if not name.startswith(PACKAGE):
        return
    if what == "module":
        pages = module_chapters(_root(app)).get(name)
    elif what in ("class", "exception", "function") and _is_documentable(obj):
        pages = object_chapters(_root(app)).get(canonical_name(obj))
    else:
        return
    if pages:
        lines.extend(["", back_link(pages), ""])


def _xref(docname: str, qualified: str, reftype: str, text: str) -> addnodes.pending_xref:
    ref = addnodes.pending_xref("", refdomain="py", reftype=reftype, reftarget=qualified, refexplicit=True,
                                refwarn=True, refdoc=docname)
    ref += nodes.literal(text, text, classes=["xref", "py", f"py-{reftype}"])
    return ref


def chapter_listing(use: ChapterUse) -> dict[str, list[str]]:
    """What a chapter page lists: the objects its code imports or its markdown names, by module, and the
    modules it imports from that give no object by name."""
    by_module: dict[str, list[str]] = {}
    for qualified in sorted(use.imported | use.mentioned):
        by_module.setdefault(qualified.rsplit(".", 1)[0], []).append(qualified)
    for module_name in use.modules:
        if not any(m == module_name or m.startswith(module_name + ".") for m in by_module):
            by_module.setdefault(module_name, [])
    return dict(sorted(by_module.items()))


def _chapter_section(docname: str, use: ChapterUse) -> nodes.section:
    title = "Companion code used in this chapter"
    section = nodes.section(ids=["companion-code-used-in-this-chapter"], names=[nodes.fully_normalize_name(title)])
    section += nodes.title(title, title)
    intro = ("What this chapter's code takes from the companion package, each linked to its entry in the ")
    paragraph = nodes.paragraph(intro, intro)
    paragraph += addnodes.pending_xref("", nodes.inline("API reference", "API reference"), refdomain="std",
                                       reftype="doc", reftarget=f"/{API_DIR}/index", refexplicit=True,
                                       refwarn=True, refdoc=docname)
    paragraph += nodes.Text(".")
    section += paragraph
    items = nodes.bullet_list()
    for module_name, objects in chapter_listing(use).items():
        item = nodes.paragraph()
        item += _xref(docname, module_name, "mod", module_name)
        for index, qualified in enumerate(objects):
            item += nodes.Text(": " if index == 0 else ", ")
            obj = public_objects()[qualified]
            item += _xref(docname, qualified, "class" if inspect.isclass(obj) else "func", qualified.rsplit(".")[-1])
        items += nodes.list_item("", item)
    section += items
    agents = sorted(use.agents - use.imported)
    if agents:
        text = "Agents whose runs it trains or reads by name: "
        paragraph = nodes.paragraph(text, text)
        for index, qualified in enumerate(agents):
            if index:
                paragraph += nodes.Text(", ")
            paragraph += _xref(docname, qualified, "class", qualified.rsplit(".")[-1])
        paragraph += nodes.Text(".")
        section += paragraph
    return section


def _add_chapter_section(app: Sphinx, doctree: nodes.document) -> None:
    docname = app.env.docname
    use = chapter_uses(_root(app)).get(docname)
    if use is None or not (use.objects() or use.modules):
        return
    top = next(iter(doctree.findall(nodes.section)), None)
    (top if top is not None else doctree).append(_chapter_section(docname, use))


def _reread_api_pages(app: Sphinx, env: BuildEnvironment, added: set[str], changed: set[str],
                      removed: set[str]) -> list[str]:
    """A chapter's change can move back-links: re-read the reference pages with it (and drop stale tables)."""
    if not any(chapter_number(d) is not None for d in added | changed | removed):
        return []
    for table in (chapter_uses, object_chapters, module_chapters):
        table.cache_clear()
    return [d for d in env.found_docs if d.startswith(API_DIR + "/")]


def _public_bases(app: Sphinx, name: str, obj: object, options: object, bases: list[type]) -> None:
    """"Bases:" names no private class (``_SegmentTree``, which nothing documents): its own bases stand in."""
    index = 0
    while index < len(bases):
        base = bases[index]
        if base.__module__.startswith(PACKAGE) and base.__name__.startswith("_"):
            bases[index:index + 1] = [b for b in base.__bases__ if b is not object]
        else:
            index += 1


def _resolve_like_python(app: Sphinx, env: BuildEnvironment, node: addnodes.pending_xref,
                         contnode: nodes.Element) -> nodes.Element | None:
    """A reference the Python domain did not find, resolved as Python resolves the name: through the module's
    imports (``PPO`` in a module that imports it, ``companion.agents.DQN``) and the class's bases (``act``
    on a class that inherits it), to the place the object is defined and documented."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, klass = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if module and not target.startswith(PACKAGE + "."):
        candidates += [f"{module}.{klass}.{target}"] if klass else []
        candidates.append(f"{module}.{target}")
    for candidate in candidates:
        if not candidate.startswith(PACKAGE + "."):
            continue
        _, obj = _resolve(candidate)
        if obj is None:
            continue
        domain = env.get_domain("py")
        if isinstance(obj, property):
            obj = obj.fget
        if _is_documentable(obj):
            canonical = canonical_name(obj)
        else:  # data, such as a constant imported from the module that documents it
            last = candidate.rsplit(".", 1)[1]
            canonical = next((name for name in domain.objects if name.endswith("." + last) and name != candidate
                              and _resolve(name)[1] is obj), candidate)
        if canonical != candidate:
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode)
    return None


def _ignore_external_targets(app: Sphinx, config: Config) -> None:
    config.nitpick_ignore_regex = [*config.nitpick_ignore_regex, *EXTERNAL_TARGETS]
    config.nitpick_ignore = [*config.nitpick_ignore, *(("py:class", name) for name in type_variables())]


class ReexportsDirective(SphinxDirective):
    """``.. companion-reexports:: companion.agents``: the names a package re-exports, linked to their entries."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        by_module: dict[str, list[str]] = {}
        for name, obj in reexports(module_name):
            role = "class" if inspect.isclass(obj) else "func"
            by_module.setdefault(obj.__module__, []).append(f":py:{role}:`{name} <{canonical_name(obj)}>`")
        lines = [f"``{module_name}`` also gives these names, documented where they are defined:", ""]
        lines += [f"- from :py:mod:`{source}`: {', '.join(links)}" for source, links in sorted(by_module.items())]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children


_ROLE = re.compile(r":(?P<role>class|func|meth|data|attr|exc|obj):`(?P<target>[^`<>]+)`")


def qualify_roles(text: str, module_name: str) -> str:
    """Python roles in a module's text, made to resolve outside the module: ``:class:`Agent``` in
    ``companion.agents.base`` becomes ``:class:`~companion.agents.base.Agent```."""
    module = importlib.import_module(module_name)

    def qualify(match: re.Match[str]) -> str:
        target = match["target"]
        if target.startswith(("~", ".", PACKAGE + ".")) or not hasattr(module, target.split(".")[0]):
            return match.group(0)
        return f":{match['role']}:`~{module_name}.{target}`"

    return _ROLE.sub(qualify, text)


class RegistryDirective(SphinxDirective):
    """``.. companion-registry:: companion.agents.AGENTS``: a registry (a dict of names to classes or functions)
    as a table of its names, each with a link to what it names."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name, _, name = self.arguments[0].rpartition(".")
        registry = getattr(importlib.import_module(module_name), name)
        lines = [".. list-table::", "   :header-rows: 1", "", "   * - Name", "     - What it names"]
        for key, obj in registry.items():
            role = "class" if inspect.isclass(obj) else "func"
            lines += [f"   * - ``{key}``", f"     - :py:{role}:`~{canonical_name(obj)}`"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children


class ModulesDirective(SphinxDirective):
    """``.. companion-modules::``: a table of the public modules: what each holds, and the chapter that
    explains it."""

    def run(self) -> list[nodes.Node]:
        chapters = module_chapters(_root(self.env.app))
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 55 15", "",
                 "   * - Module", "     - What it holds", "     - In the book"]
        for module_name in public_modules():
            doc = inspect.getdoc(importlib.import_module(module_name)) or ""
            summary = [qualify_roles(doc.split("\n\n")[0].replace("\n", " "), module_name)]
            cite_in_lines(summary, _bib_entries(self.env.app))
            first = chapters[module_name][0]
            number = chapter_number(first)
            link = f":doc:`Chapter {number} </{first}>`" if number is not None else f":doc:`/{first}`"
            lines += [f"   * - :py:mod:`{module_name}`", f"     - {summary[0]}", f"     - {link}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.get_source_info()[0]), self.content_offset, container)
        return container.children


def setup(app: Sphinx) -> dict[str, object]:
    app.setup_extension("sphinx.ext.autodoc")
    app.setup_extension("sphinx.ext.napoleon")
    app.connect("config-inited", _ignore_external_targets)
    # Around napoleon (priority 500), which turns Args/Raises sections into fields.
    app.connect("autodoc-process-docstring", _before_napoleon, priority=490)
    app.connect("autodoc-process-docstring", _after_napoleon, priority=510)
    app.connect("autodoc-process-docstring", _process_docstring, priority=600)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_like_python)
    # Before the table-of-contents collector reads the chapter, so the new section is in its page contents.
    app.connect("doctree-read", _add_chapter_section, priority=400)
    app.connect("env-get-outdated", _reread_api_pages)
    app.add_directive("companion-reexports", ReexportsDirective)
    app.add_directive("companion-modules", ModulesDirective)
    app.add_directive("companion-registry", RegistryDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
