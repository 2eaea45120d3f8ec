# tmemfs: every target installs what it needs and can be run again safely.
# Run as root on Debian 12 (apt packages, /usr/local/bin links, FUSE mounts).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config fio attr gcc python3-dev python3-venv redis-server
STAMP := $(VENV)/.installed
BINDIR := /usr/local/bin

.PHONY: install demo test lint bench stress clean help

help:
	@echo "make demo    set up, mount a sample tree with cleancache, run fio, print stats, unmount"
	@echo "make test    set up and run the whole test suite (with ruff and mypy)"
	@echo "make bench   set up and run the benchmarks (about 30 min; QUICK=1 under 3 min a part, less precise)"
	@echo "             writes BENCHMARKS.md and docs/bench/*.png"
	@echo "make stress  set up and run the long stress: model checks (1 and 4 clients a file), metadata"
	@echo "             stress, faults, fio (about 40 min; QUICK=1 about a minute and a half); results as in"
	@echo "             RELIABILITY.md"
	@echo "make install Debian packages, $(VENV), the package, links in $(BINDIR)"

install: $(STAMP)
	@for prog in tmemfs tmemctl; do \
	  [ "$$(readlink $(BINDIR)/$$prog)" = "$(CURDIR)/$(VENV)/bin/$$prog" ] || \
	    ln -sfn "$(CURDIR)/$(VENV)/bin/$$prog" "$(BINDIR)/$$prog"; \
	done

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  norc=; if [ ! -e /usr/sbin/policy-rc.d ]; then norc=1; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; status=$$?; \
	  [ -z "$$norc" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; fi
	@[ -e /dev/fuse ] || modprobe fuse || true
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

demo: install
	@tools/demo.sh

lint: install
	$(VENV)/bin/ruff check fusefs backends tools tests
	$(VENV)/bin/mypy

test: install lint
	$(VENV)/bin/pytest

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m tools.bench $(if $(QUICK),--quick)
	$(PY) -m tools.bench_backends $(if $(QUICK),--quick)
	$(PY) -m tools.bench_cluster $(if $(QUICK),--quick)
	$(PY) -m tools.bench_inflight $(if $(QUICK),--quick)

stress: install
	$(PY) -m tools.stress $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info bench-results .pytest_cache .mypy_cache .ruff_cache
