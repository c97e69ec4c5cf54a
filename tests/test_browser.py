"""The built book in a real browser: headless Chromium opens every page from disk, as a reader of a
downloaded copy would (``file://``, no server, no network), and checks what only a browser shows.

- Math is rendered (MathJax from the book's own files): every math element holds MathJax's output and no
  raw TeX delimiters are left in the text outside code.
- Every image has loaded (a non-zero natural width), and each chapter shows as many figures as it
  produces (``tests/notebooks/figures.json``).
- The console stays free of errors (a script or style fetched from a CDN fails here, with no network).
- Every internal link resolves to a page that exists, and its ``#anchor`` to an element of that page.
- Notebook pages carry the launch (Colab) and download buttons.

Run it after building the book: ``make test-browser`` (the build CI makes, ``make book-executed``;
``make test-browser BOOK_HTML=_build/html`` for ``make book``). Chromium and ChromeDriver come from the OS
packages (Debian: ``chromium``, ``chromium-driver``; ``make browser-setup`` installs them where it can);
without them, or without a built book, the test is skipped with the reason, unless
``COMPANION_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from sync_links import colab_url  # tools/ is on sys.path (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "tests" / "notebooks" / "figures.json"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--allow-file-access-from-files", "--window-size=1280,900",
                  "--host-resolver-rules=MAP * ~NOTFOUND"]  # no network even where the machine has one (CI)
#: TeX that MathJax would have replaced: inline and display delimiters, and common commands.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\frac\{|\\begin\{|\\mathrm\{|\\sum_"
                     r"|\$[^$\n]*(?:\\[A-Za-z]+|[_^])[^$\n]*\$|(?<![\w$])\$[A-Za-z]\$(?![\w$])")  # $...$ left as text
#: Pages that Sphinx writes besides the book's own, checked like the others except for figures.
NOT_CHAPTERS = ("genindex.html", "search.html", "py-modindex.html")


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("COMPANION_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def book_html() -> Path:
    """The built book to open: ``$COMPANION_BOOK_HTML`` (``make test-browser`` sets it). Without it the test
    is skipped, so that ``make test`` never checks a stale build left from earlier."""
    if not os.environ.get("COMPANION_BOOK_HTML"):
        _skip_or_fail("no built book named: build one, then `make test-browser` (BOOK_HTML=... for another build)")
    path = Path(os.environ["COMPANION_BOOK_HTML"]).resolve()
    if not (path / "index.html").exists():
        _skip_or_fail(f"COMPANION_BOOK_HTML={path} holds no built book")
    return path


REDIRECT = re.compile(r'<meta http-equiv="Refresh" content="0; url=([^"]+)"', re.IGNORECASE)


def pages(html: Path) -> list[Path]:
    """Every page of the book, redirects (the root ``index.html``) left out: ``redirects`` checks them."""
    skip = {"_static", "_sources", "_images", "_modules"}
    found = sorted(p for p in html.rglob("*.html") if not skip & set(p.relative_to(html).parts))
    return [p for p in found if not REDIRECT.search(p.read_text(errors="replace")[:500])]


def redirects(html: Path) -> dict[Path, Path]:
    """Pages that only redirect, and where to."""
    found = {}
    for page in html.rglob("*.html"):
        match = REDIRECT.search(page.read_text(errors="replace")[:500])
        if match:
            found[page] = (page.parent / match.group(1)).resolve()
    return found


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


def anchors(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    if page not in cache:
        parser = _Anchors()
        parser.feed(page.read_text(errors="replace"))
        cache[page] = parser.ids
    return cache[page]


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip_or_fail("selenium is not installed (`make setup` installs the test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _skip_or_fail("no Chromium and ChromeDriver here: install the OS packages (Debian: "
                      "`apt-get install chromium chromium-driver`, or `make browser-setup`)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no Selenium Manager download
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


WAIT_FOR_MATH = """
const done = arguments[arguments.length - 1];
if (!document.querySelector('.math') ) { done('no math'); return; }
const start = Date.now();
(function poll() {  // the deferred MathJax script may not have run yet when the driver hands the page over
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    mj.startup.promise.then(() => done('rendered'), (e) => done('error: ' + e));
  } else if (Date.now() - start > 10000) { done('no MathJax'); } else { setTimeout(poll, 100); }
})();
"""

PAGE_FACTS = """
const text = (() => {
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, textarea, .highlight, mjx-container').forEach(e => e.remove());
  return body.innerText;
})();
const images = [...document.querySelectorAll('img')].map(img => ({
  src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth,
  output: !!img.closest('.cell_output')}));
const math = [...document.querySelectorAll('.math')];
return {
  text: text,
  images: images,
  math: math.length,
  mathUnrendered: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  launchColab: [...document.querySelectorAll('a[href*="colab.research.google.com"]')].map(a => a.href),
  // The book's own copy of the notebook (the Colab link ends in .ipynb too): a file beside the page.
  downloadNotebook: [...document.querySelectorAll('a[href$=".ipynb"]')].some(a => a.protocol === 'file:'),
};
"""


def test_every_page_renders_offline_with_its_figures_links_and_buttons(browser):
    html = book_html()
    all_pages = pages(html)
    assert len(all_pages) > 5, f"{html}: only {len(all_pages)} pages"
    figures = json.loads(FIGURES.read_text())
    cache: dict[Path, set[str]] = {}
    problems: list[str] = []
    checked_math = checked_images = checked_links = 0
    for page in all_pages:
        name = page.relative_to(html).as_posix()
        browser.get(page.as_uri())
        state = browser.execute_async_script(WAIT_FOR_MATH)
        if state not in ("rendered", "no math"):
            problems.append(f"{name}: MathJax {state}")
        # Images below the fold may load late: bring each into view, then read the page.
        browser.execute_script("document.querySelectorAll('img').forEach(i => {i.loading = 'eager';"
                               " i.scrollIntoView();}); window.scrollTo(0, 0);")
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.images].map(i => i.complete ? 0 : new Promise(r => {i.onload = i.onerror = r;})))"
            ".then(() => done(true)); setTimeout(() => done(false), 20000);")
        facts = browser.execute_script(PAGE_FACTS)
        checked_math += facts["math"]
        problems += [f"{name}: math not rendered: {m!r}" for m in facts["mathUnrendered"]]
        for match in RAW_TEX.finditer(facts["text"]):
            context = facts["text"][max(0, match.start() - 40): match.end() + 40].replace("\n", " ")
            problems.append(f"{name}: raw TeX left in the text: ...{context}...")
        for image in facts["images"]:
            checked_images += 1
            if not image["complete"] or image["width"] == 0:
                problems.append(f"{name}: image did not load: {image['src']}")
        for entry in browser.get_log("browser"):
            if entry["level"] == "SEVERE":
                problems.append(f"{name}: console error: {entry['message'][:300]}")
        for link in facts["links"]:
            url = urlparse(link)
            if url.scheme != "file":
                continue
            checked_links += 1
            target = Path(unquote(url.path))
            if not target.exists():
                shown = target.relative_to(html) if html in target.parents else target
                problems.append(f"{name}: broken link to {shown}")
            elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in anchors(target, cache):
                problems.append(f"{name}: link to a missing anchor {target.relative_to(html)}#{url.fragment}")
        if name.startswith("notebooks/"):
            stem = Path(name).stem
            if colab_url(f"notebooks/{stem}.ipynb") not in facts["launchColab"]:
                problems.append(f"{name}: no launch button for notebooks/{stem}.ipynb: {facts['launchColab']}")
            if not facts["downloadNotebook"]:
                problems.append(f"{name}: no download button for the .ipynb")
            shown = sum(1 for image in facts["images"] if image["output"])
            if stem in figures and shown != figures[stem]:
                problems.append(f"{name}: {shown} figures on the page, the chapter produces {figures[stem]}")
    for page, target in redirects(html).items():
        if target not in all_pages:
            problems.append(f"{page.relative_to(html)} redirects to {target}, which is not a page of the book")
    assert not problems, f"{len(problems)} problems over {len(all_pages)} pages:\n" + "\n".join(problems[:80])
    chapters = [p for p in all_pages if p.parent.name == "notebooks"]
    assert len(chapters) == len(figures), "every chapter was opened"
    assert checked_math > 0 and checked_images > 0 and checked_links > 0
    print(f"browser: {len(all_pages)} pages, {checked_math} math elements, {checked_images} images, "
          f"{checked_links} internal links checked")
