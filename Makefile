# Two commands, each doing its own set-up from nothing:
#   make book   build the book into _build/html, executing every notebook (budget: $COMPANION_BUDGET, default book)
#   make test   unit tests, nbval over every notebook at the quick budget, and the chapters run as on Colab
#
# Variables: PYTHON (an interpreter >= 3.10), TORCH (the torch requirement installed first; on a
# machine with a CUDA GPU use e.g. TORCH=torch to take PyPI's default build), TORCH_INDEX (an index to
# take it from, e.g. https://download.pytorch.org/whl/cpu on a CI runner).

PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COMPANION_BUDGET ?= book
BOOK_DIR ?= .
export COMPANION_BUDGET

# The execution cache is keyed by notebook content, not by budget: each budget other than the
# default builds under its own folder, so a quick build is never served as the book.
ifeq ($(COMPANION_BUDGET),book)
BOOK_OUT := .
else
BOOK_OUT := _build/budget-$(COMPANION_BUDGET)
endif

.PHONY: book test setup lint sync-links record-notebook-outputs clean book-executed test-browser browser-setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[book,test,dev,sweep]"
	touch $(STAMP)

# Jupyter Book's execution cache is keyed by notebook content alone: a change in companion/ or
# results/ would be served stale outputs. The cache is dropped when their fingerprint changes.
FINGERPRINT = find companion results -type f \( -name '*.py' -o -name '*.csv' -o -name '*.json' \) \
	2>/dev/null | LC_ALL=C sort | xargs cat 2>/dev/null | sha1sum | cut -c1-16

book: $(STAMP)
	@fp=$$($(FINGERPRINT)); mark=$(BOOK_OUT)/_build/.companion-fingerprint; \
	if [ "$$(cat $$mark 2>/dev/null)" != "$$fp" ]; then rm -rf $(BOOK_OUT)/_build/.jupyter_cache; fi
	TQDM_DISABLE=1 $(BIN)/jupyter-book build $(BOOK_DIR) --path-output $(BOOK_OUT) -W -n --keep-going
	@$(FINGERPRINT) > $(BOOK_OUT)/_build/.companion-fingerprint
	@echo "book: $(BOOK_OUT)/_build/html/index.html (budget $(COMPANION_BUDGET))"

test: $(STAMP)
	COMPANION_BUDGET=quick $(BIN)/python tools/nbval_outputs.py merge
	COMPANION_BUDGET=quick $(BIN)/python -m pytest tests notebooks/.nbval.*.ipynb --nbval-lax \
		--nbval-sanitize-with tests/notebooks/sanitize.cfg -p no:cacheprovider --durations=15

# The book from notebooks executed already (by default, the simulated-Colab run of `make test`), executing
# nothing again: CI checks the pages (MyST, cross-references, -W) without running every chapter twice.
EXECUTED ?= _build/colab-sim/executed
STAGE := _build/book-executed
book-executed: $(STAMP)
	@test -n "$$(ls $(EXECUTED)/*.ipynb 2>/dev/null)" || { echo "no executed notebooks in $(EXECUTED): run make test first"; exit 1; }
	rm -rf $(STAGE) && mkdir -p $(STAGE)/src/notebooks
	cp -r book _toc.yml $(STAGE)/src/
	cp $(EXECUTED)/*.ipynb $(STAGE)/src/notebooks/
	sed 's/^\(  *execute_notebooks:\) cache/\1 "off"/' _config.yml > $(STAGE)/src/_config.yml
	grep -q 'execute_notebooks: "off"' $(STAGE)/src/_config.yml
	TQDM_DISABLE=1 $(BIN)/jupyter-book build $(STAGE)/src --path-output $(STAGE) -W -n --keep-going
	@echo "book: $(STAGE)/_build/html/index.html (from $(EXECUTED), nothing executed)"

# Headless Chromium over every page of a built book (tests/test_browser.py). BOOK_HTML: which build.
BOOK_HTML ?= $(STAGE)/_build/html
test-browser: $(STAMP)
	COMPANION_BOOK_HTML=$(BOOK_HTML) $(BIN)/python -m pytest tests/test_browser.py -p no:cacheprovider -s

# Chromium and ChromeDriver from the OS packages, where this machine lets us install them.
browser-setup:
	@if command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null; then \
		echo "browser: found $$(command -v chromium chromium-browser google-chrome | head -1) and $$(command -v chromedriver)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y -q chromium chromium-driver >/dev/null; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then sudo apt-get install -y -q chromium chromium-driver >/dev/null; \
	else echo "browser: no Chromium here and no way to install it; tests/test_browser.py will be skipped"; fi

lint: $(STAMP)
	$(BIN)/ruff check companion tests tools book/_ext

# Rewrite the repository URL and version (from _config.yml and companion/__init__.py) wherever they are copied.
sync-links: $(STAMP)
	$(BIN)/python tools/sync_links.py

# Execute the notebooks at the quick budget and store the outputs of their `# NBVAL_CHECK_OUTPUT` cells.
record-notebook-outputs: $(STAMP)
	COMPANION_BUDGET=quick $(BIN)/python tools/nbval_outputs.py record

clean:
	rm -rf _build
