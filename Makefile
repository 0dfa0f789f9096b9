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
SOAK_ARGS ?=
SOAK_SECONDS ?= 600

.PHONY: test simulate lint typecheck bench soak soak-ci system-deps clean lock i18n

# Installs exactly the locked versions, each checked against its hash (requirements/test.txt,
# made by `make lock`), then the project itself without dependencies. The venv's bin/ holds
# lockerd and lockerctl: `source .venv/bin/activate` puts them on PATH.
$(STAMP): pyproject.toml requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Regenerate the hashed lock files from pyproject.toml's extras after adding or changing a
# dependency (one command; commit the result). pip-compile is pip-tools, from the dev extra.
# Each file is what one kind of machine installs: a cabinet (with or without lgpio), an
# operator or fleet server, a developer or CI. The project's own line (a file:// URL to this
# checkout, which cannot be hashed) is dropped: it is installed separately with --no-deps.
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
	--no-emit-find-links
lock: $(STAMP)
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra cabinet --extra lcd \
		-o requirements/cabinet.txt pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra cabinet --extra lcd --extra lgpio \
		-o requirements/cabinet-lgpio.txt pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra fleet -o requirements/fleet.txt pyproject.toml
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --extra test -o requirements/test.txt pyproject.toml
	sed -i -e '/^# WARNING: pip install will require/,/^    # via parcel-locker/d' requirements/*.txt

# The Debian packages the tests and the simulator need: a real broker, a real browser for the
# web pages, PostgreSQL for the fleet service's database tests, espeak-ng for voice prompts,
# faketime (libfaketime) for the soak's wall-clock steps.
# Installed only when one is absent, and only when we may (root); otherwise the command to run
# is printed.
DEB_PACKAGES := mosquitto mosquitto-clients chromium chromium-driver fonts-dejavu-core postgresql espeak-ng sox shellcheck faketime
system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages: sudo apt-get install $$missing" >&2; exit 1; \
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

# The front panel's translations: texts.py -> panel.pot -> each language's panel.po (edit
# those by hand) -> panel.mo. The .mo files are committed so a locker needs only the standard
# library's gettext; tests/test_panel_view.py fails when one is stale.
LOCALE := locker/cabinet/panel/locale
i18n: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -k N_ --no-location --sort-output \
	  --project=parcel-locker -o $(LOCALE)/panel.pot .
	$(VENV)/bin/pybabel update -i $(LOCALE)/panel.pot -d $(LOCALE) -D panel --no-fuzzy-matching
	$(VENV)/bin/pybabel compile -d $(LOCALE) -D panel --statistics

# The chaos soak (issue 10), locker.sim.soak: SOAK_SECONDS (10 minutes) of faults under
# traffic, then the invariants; exits 1 on a violation, 2 if it could not run. CI runs one
# minute: make soak SOAK_SECONDS=60, or its alias make soak-ci. SOAK_ARGS adds options
# (--seed N, --workdir DIR to keep the logs and the journal).
soak: system-deps $(STAMP)
	$(PY) -m locker.sim.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

soak-ci: SOAK_SECONDS = 60
soak-ci: soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
