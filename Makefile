# db-backup: `make demo` shows it working, `make test` runs every test tier.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := postgresql postgresql-client rclone age debootstrap systemd-container util-linux chromium

.PHONY: help venv deps demo demo-clean lint test test-unit test-integration test-e2e deb bench clean clean-cache

help:
	@echo "make demo        run a backup against a throwaway local PostgreSQL and show the result"
	@echo "make test        install what the tests need (apt + venv) and run every tier"
	@echo "make deb         build dist/db-backup_<version>_<arch>.deb"
	@echo "make bench       run the benchmarks (see benchmarks/RESULTS.md)"
	@echo "make demo-clean  remove everything the demo made (.demo/ and .venv/)"
	@echo "make clean-cache remove the e2e tier's cached Debian rootfs"

# The dev lock (packaging/lock-requirements.sh writes it from pyproject.toml) pins every package
# with its sha256, setuptools and wheel included: pip runs in hash-checking mode and installs
# nothing else. db-backup itself is then installed editable with its dev extra, built by the
# locked setuptools (--no-build-isolation: no isolated build env fetching an unpinned setuptools)
# and without resolving anything (--no-deps); `pip check` proves the lock satisfies pyproject.
DEV_LOCK := packaging/requirements-dev.lock

$(BIN)/db-backup: pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(DEV_LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e '.[dev]'
	$(BIN)/pip check
	touch $@

venv: $(BIN)/db-backup

# Debian packages the tests use: the PostgreSQL server and client, rclone, and what the
# end-to-end tier needs to boot a Debian container (debootstrap, systemd-nspawn).
deps:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	  apt-get update -qq; \
	  if [ -n "$$missing" ]; then \
	    echo "deps: installing Debian packages: $$missing (apt may also upgrade packages they depend on; nothing else is upgraded)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "deps: every Debian package the tests need is installed; nothing installed or upgraded"; fi; \
	else echo "deps: not root, skipping apt-get (tests that need missing packages will skip)"; fi

demo: venv
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(MAKE) deps
	$(BIN)/python scripts/demo.py

demo-clean:
	-@[ -f .demo/pg/data/postmaster.pid ] && runuser -u postgres -- /usr/lib/postgresql/*/bin/pg_ctl -D .demo/pg/data -m fast stop 2>/dev/null || true
	rm -rf .demo $(VENV)

lint: venv
	$(BIN)/ruff check src tests scripts benchmarks packaging
	$(BIN)/ruff format --check src tests scripts benchmarks packaging
	$(BIN)/mypy
	$(BIN)/lint-imports

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-integration: venv
	$(BIN)/pytest -q tests/integration

test-e2e: venv
	$(BIN)/pytest -q -rs tests/e2e

# Branch coverage of src/ over the unit and integration tiers (the CLI and daemon child processes
# included: [tool.coverage.run] patch = subprocess); the floor is what the suite reaches, a little
# under it so a timing-dependent branch cannot fail CI. The e2e tier tests the installed .deb.
COVERAGE_FLOOR := 89

test: deps venv lint
	$(BIN)/pytest -rs --cov --cov-report=term:skip-covered --cov-fail-under=$(COVERAGE_FLOOR) tests/unit tests/integration
	$(BIN)/pytest -rs tests/e2e
	@echo "make test: the e2e tier keeps its Debian rootfs in $${DB_BACKUP_E2E_CACHE:-/var/cache/db-backup-e2e}" \
	  "($$(du -sh $${DB_BACKUP_E2E_CACHE:-/var/cache/db-backup-e2e} 2>/dev/null | cut -f1)) to boot faster next time; 'make clean-cache' removes it"

clean-cache:
	rm -rf $${DB_BACKUP_E2E_CACHE:-/var/cache/db-backup-e2e}

deb:
	bash packaging/build-deb.sh $(DEB_ARGS)

bench: venv
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_idle_daemon.py

clean: demo-clean
	rm -rf $(VENV) dist build *.egg-info
