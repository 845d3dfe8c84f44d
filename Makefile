# The two commands of the README: `make run` and `make test`. Both install what is missing first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test install lint bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	# Pinned in requirements-dev.txt as "# no-deps: pkg==X": installed without their dependencies.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps $$(sed -n 's/^# no-deps: //p' requirements-dev.txt)
	touch $@

install: $(VENV)/.installed

run: install
	scripts/run.sh

test: install
	# Test servers speak plain HTTP: no HTTPS redirect or secure-only cookies (see README, Tests).
	DJANGO_HTTPS=0 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/run.py --quick
