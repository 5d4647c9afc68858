# The two commands of the README: `make run` (embedded dashboard) and `make test` (whole suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TEST_REDIS_PORT ?= 6391
TEST_OUTPUT ?= test-output
PG_URL ?= postgres://launcher:launcher@127.0.0.1:5432/launcher
# Only the pytest-django test database is created and dropped; the `launcher` database is never written.

.PHONY: run test install install-dev services

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	$(PY) manage.py serve

services:
	bash scripts/test-services.sh
	bash tests/images/build.sh
	bash tests/images/build_nvflare.sh
	bash tests/images/build_compose.sh

test: $(VENV)/.dev services
	mkdir -p $(TEST_OUTPUT)
	# 1. the whole suite against PostgreSQL + Redis + the real dockerd
	env -u DEBUG DATABASE_URL=$(PG_URL) REDIS_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/0 \
	  LAUNCHER_REQUIRE_SERVICES=1 LAUNCHER_REQUIRE_DOCKER=1 LAUNCHER_TEST_OUTPUT=$(abspath $(TEST_OUTPUT)) \
	  $(PY) -m pytest -p no:cacheprovider -q
	# 2. the embedded-mode tests against SQLite + the in-process channel layer and worker
	env -u DATABASE_URL -u REDIS_URL -u DEBUG LAUNCHER_REQUIRE_DOCKER=1 LAUNCHER_TEST_OUTPUT=$(abspath $(TEST_OUTPUT)) \
	  $(PY) -m pytest -p no:cacheprovider -q -m embedded
