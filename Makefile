# tmemfs: every target installs what it needs and can be run again safely.
# Run as root on Debian 12 (apt packages, /usr/local links, man pages and completions, FUSE mounts).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config fio attr gcc python3-dev python3-venv redis-server man-db \
  bash-completion
STAMP := $(VENV)/.installed
PREFIX := /usr/local
BINDIR := $(PREFIX)/bin
MANDIR := $(PREFIX)/share/man/man1
COMPDIR := $(PREFIX)/share/bash-completion/completions
PROGS := tmemfs tmemctl
MANPAGES := $(PROGS:%=build/man/%.1)
# Directories `make install` had to create, so that `make uninstall` removes those and no others.
CREATED_DIRS := build/created-dirs

# The venv is made with Debian's own interpreter (not one in root's 0700 home, e.g. pyenv's), so that
# .venv/bin/tmemctl runs for every user who can reach the tree. The stamp records the interpreter; a venv
# made by another one (or before the stamp existed) is made again.
SYSTEM_PYTHON := /usr/bin/python3
PYSTAMP := $(VENV)/.interpreter
WANTED_PY := $(SYSTEM_PYTHON) $(shell $(SYSTEM_PYTHON) -c 'import platform; print(platform.python_version())' \
  2>/dev/null)
ifneq ($(shell cat $(PYSTAMP) 2>/dev/null),$(WANTED_PY))
.PHONY: $(PYSTAMP)
endif

.PHONY: install uninstall demo test unit lint bench stress clean help

help:
	@echo "make demo      set up, mount a sample tree with cleancache, run fio, print stats, unmount"
	@echo "make test      set up and run the whole test suite (with ruff and mypy)"
	@echo "make unit      the unit tests alone (pytest -m \"not mount\"): no set-up, no root, no FUSE; any user"
	@echo "               who can read the tree, once $(VENV) exists (make install makes it)"
	@echo "make bench     set up and run the benchmarks (about 35 min; QUICK=1 under 3 min a part, less precise)"
	@echo "               writes BENCHMARKS.md and docs/bench/*.png"
	@echo "make stress    set up and run the long stress: model checks (1 and 4 clients a file), metadata"
	@echo "               stress, faults, fio (about 40 min; QUICK=1 about a minute and a half); results as in"
	@echo "               RELIABILITY.md"
	@echo "make install   Debian packages, $(VENV), the package, links in $(BINDIR), man pages in $(MANDIR),"
	@echo "               bash completion in $(COMPDIR)"
	@echo "make uninstall remove what make install put outside the tree (links, man pages, completions)"

# Installs the missing Debian packages without starting services (policy-rc.d).
define apt_packages
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  norc=; if [ ! -e /usr/sbin/policy-rc.d ]; then norc=1; \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; status=$$?; \
	  [ -z "$$norc" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; fi
endef

install: $(STAMP) $(MANPAGES)
	@for prog in $(PROGS); do \
	  [ "$$(readlink $(BINDIR)/$$prog)" = "$(CURDIR)/$(VENV)/bin/$$prog" ] || \
	    ln -sfn "$(CURDIR)/$(VENV)/bin/$$prog" "$(BINDIR)/$$prog"; \
	done
	@mkdir -p build
	@for d in $(MANDIR) $(dir $(COMPDIR)) $(COMPDIR); do \
	  [ -d $$d ] || { mkdir -p $$d && echo $$d >> $(CREATED_DIRS); }; done
	@for prog in $(PROGS); do \
	  install -m 0644 build/man/$$prog.1 $(MANDIR)/$$prog.1; \
	  install -m 0644 tools/completion/$$prog.bash $(COMPDIR)/$$prog; \
	done

uninstall:
	@for prog in $(PROGS); do \
	  [ "$$(readlink $(BINDIR)/$$prog)" != "$(CURDIR)/$(VENV)/bin/$$prog" ] || rm -f $(BINDIR)/$$prog; \
	  rm -f $(MANDIR)/$$prog.1 $(COMPDIR)/$$prog; \
	done
	@[ ! -e $(CREATED_DIRS) ] || { tac $(CREATED_DIRS) | xargs -r rmdir --ignore-fail-on-non-empty; \
	  rm -f $(CREATED_DIRS); }

$(PYSTAMP):
	$(apt_packages)
	rm -rf $(VENV)
	$(SYSTEM_PYTHON) -m venv $(VENV)
	@echo "$(SYSTEM_PYTHON) $$($(SYSTEM_PYTHON) -c 'import platform; print(platform.python_version())')" > $@

$(STAMP): pyproject.toml $(PYSTAMP)
	$(apt_packages)
	@[ -e /dev/fuse ] || modprobe fuse || true
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# Generated at build time from what `tmemfs --help`, `tmemctl --help` and `tmemctl CMD --help` print.
build/man/%.1: $(STAMP) tools/manpage.py $(wildcard fusefs/*.py backends/*.py)
	@mkdir -p build/man
	$(PY) -m tools.manpage $* > $@.tmp && mv $@.tmp $@

demo: install
	@tools/demo.sh

lint: install
	$(VENV)/bin/ruff check fusefs backends tools tests
	$(VENV)/bin/mypy

test: install lint
	$(VENV)/bin/pytest

# No install prerequisite: no apt, no root, nothing mounted; only the venv `make install` made.
unit:
	@[ -x $(VENV)/bin/pytest ] || { echo "no $(VENV)/bin/pytest: run make install once (as root) to make $(VENV)"; exit 1; }
	$(VENV)/bin/pytest -m "not mount"

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m tools.bench $(if $(QUICK),--quick)
	$(PY) -m tools.bench_backends $(if $(QUICK),--quick)
	$(PY) -m tools.bench_cluster $(if $(QUICK),--quick)
	$(PY) -m tools.bench_inflight $(if $(QUICK),--quick)
	$(PY) -m tools.bench_frontswap $(if $(QUICK),--quick)
	$(PY) -m tools.bench_host $(if $(QUICK),--quick)

stress: install
	$(PY) -m tools.stress $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info bench-results .pytest_cache .mypy_cache .ruff_cache
