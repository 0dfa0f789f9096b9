# Two entry points do all the set-up on a fresh Debian machine (Python 3.11):
#   make simulate   the locker daemon in simulation (mock pins, emulated lock board, a real
#                   Mosquitto on loopback, a scripted story you can watch, then your keypad)
#   make test       lint, type-check and the whole pytest suite
# Both create .venv and install what they need, Debian packages included when run as root.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test simulate lint typecheck bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Mosquitto is the one system package the tests and the simulator need; install it only when
# absent, and only when we may (root). A developer without root installs it once by hand.
system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients; \
	  else \
	    echo "mosquitto is missing: sudo apt-get install mosquitto mosquitto-clients" >&2; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check locker hardware tests bench
	$(VENV)/bin/ruff format --check locker hardware tests bench
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: system-deps $(STAMP) lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

simulate: system-deps $(STAMP)
	$(PY) -m locker.sim

bench: system-deps $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
