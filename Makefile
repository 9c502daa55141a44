# LocalAIStack. `make run` serves the demo stack; `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps venv build test lint fmt bench soak run install uninstall crds clean

all: build

# System packages (deps/debian-packages.txt), installed only when missing.
deps:
	@bash deps/install.sh

# Python virtual environment for the OpenAI-client tests.
$(VENV)/.ok: deps/requirements-test.txt | deps
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r deps/requirements-test.txt
	touch $@

venv: $(VENV)/.ok

build: deps
	$(CARGO) build --all-targets

test: deps venv
	@bash deps/ensure-docker.sh
	LAS_PYTHON=$(CURDIR)/$(VENV)/bin/python $(CARGO) test --lib --bins --tests -- --test-threads=2
	$(CARGO) test -p localaistack-ffi --lib
	@echo "make test: all tests passed"

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings
	# ffi/ on its own: `--workspace` would unify both packages' features (cbindgen's build
	# dependencies with llama.cpp's) and rebuild llama.cpp a second time.
	$(CARGO) clippy -p localaistack-ffi --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates crds/ from the Rust types (a test fails when they are stale).
crds:
	LAS_UPDATE_CRDS=1 $(CARGO) test --test crds

bench: deps venv
	LAS_PYTHON=$(CURDIR)/$(VENV)/bin/python $(CARGO) bench --profile dev

# kill -9 x100 while a mixed stack converges (make test runs the same test with 5 kills).
soak: deps venv
	@bash deps/ensure-docker.sh
	LAS_SOAK_KILLS=$${LAS_SOAK_KILLS:-100} LAS_REQUIRE_DOCKER=1 $(CARGO) test --test soak -- --nocapture

run: deps
	$(CARGO) build
	bash scripts/run-quickstart.sh

# `make install`: lasctl, its man pages and its bash completion under PREFIX (default ~/.local).
# PROFILE=dev installs the debug build `make run` made instead of building a release one.
PREFIX ?= $(HOME)/.local
PROFILE ?= release
BUILT := target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))/lasctl
install: deps
	$(CARGO) build --profile $(PROFILE) --bin lasctl
	install -D -m 755 $(BUILT) $(PREFIX)/bin/lasctl
	$(PREFIX)/bin/lasctl man-pages $(PREFIX)/share/man/man1
	mkdir -p $(PREFIX)/share/bash-completion/completions
	$(PREFIX)/bin/lasctl completion bash > $(PREFIX)/share/bash-completion/completions/lasctl
	@echo "installed $(PREFIX)/bin/lasctl, man pages (man lasctl) and bash completion"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; \
	  *) echo "note: $(PREFIX)/bin is not on PATH; add it: export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

uninstall:
	rm -f $(PREFIX)/bin/lasctl $(PREFIX)/share/man/man1/lasctl.1 $(PREFIX)/share/man/man1/lasctl-*.1 \
	  $(PREFIX)/share/bash-completion/completions/lasctl

clean:
	$(CARGO) clean
	rm -rf $(VENV)
