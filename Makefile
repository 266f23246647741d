# Two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all clean

$(STAMP): pyproject.toml
	@# WordNet's sentences (Debian's wordnet-base) are the minilm task's text.
	@test -f /usr/share/wordnet/data.noun || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq wordnet-base >/dev/null; } \
		|| echo "note: WordNet text is missing; the minilm task needs it: apt-get install wordnet-base"
	@# Debian's chromium and its driver run the report's browser test (skipped without them).
	@test -x /usr/bin/chromedriver || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "note: chromium is missing; the report's browser test is skipped: apt-get install chromium chromium-driver"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A real search on the built-in task: MNIST digits, a ResNet, half the original latency.
demo: $(STAMP)
	$(VENV)/bin/autocompress search --task demo --latency-budget 0.5x --trials 20 --run-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# Including the slow end-to-end tests.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

clean:
	rm -rf runs build *.egg-info .pytest_cache
