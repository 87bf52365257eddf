# lockd — see README.md. `make run` starts the service; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test check lint types bench proto redis-server jepsen clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e clients/python -e '.[dev]'
	touch $(STAMP)

# The service on its embedded default: five engines in this process, gRPC on 127.0.0.1:7400.
run: install
	$(BIN)/lockd serve

# Regenerate the gRPC code (and .pyi stubs) from protos/ for the server (lockd/v1) and the
# client library (clients/python/lockd_client/v1); a test fails when either is stale.
proto: install
	$(BIN)/python -m lockd.protogen

# Debian's redis-server, which the conformance and cross-check tests run against.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server (tests compare lockd against it)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null; }
	@# Debian's package starts a system redis on 6379; tests start their own on free ports.
	@-command -v systemctl >/dev/null 2>&1 && systemctl disable --now redis-server >/dev/null 2>&1; true

test: install redis-server
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check lockd clients tests
	$(BIN)/ruff format --check lockd clients tests

types: install
	$(BIN)/mypy -p lockd -p lockd_client

check: lint types test

# Peers are installed only for benchmarking: Debian's etcd and ZooKeeper servers, and the
# Python clients (kazoo; etcd's gRPC stubs are generated from tests/bench/etcd.py).
bench: install redis-server
	@{ command -v etcd >/dev/null 2>&1 && test -f /usr/share/java/zookeeper.jar; } || { \
	  echo "installing Debian's etcd-server and zookeeper (benchmark peers)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq etcd-server zookeeper >/dev/null; }
	@# The packages may start system services; the benchmark starts its own on free ports.
	@-command -v systemctl >/dev/null 2>&1 && systemctl disable --now etcd zookeeper >/dev/null 2>&1; true
	$(BIN)/pip install -q redlock-py pottery kazoo
	$(BIN)/python -m tests.bench

# Long Jepsen runs, five minutes per nemesis, results under var/jepsen (docs/CORRECTNESS.md).
jepsen: install
	for n in kill power-loss pause clock partition disk; do \
	  $(BIN)/lockd jepsen run --nemesis $$n --time-limit 300 --out var/jepsen || exit $$?; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
