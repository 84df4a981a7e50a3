# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and (re)installs the project when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
DEVICE_VENV := .venv-device
SERVE_VENV := .venv-serve
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit slow faults bench bench-predict bench-fleet bench-rollout profile protos vectors clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

# A second environment with only the device extra: proves the SDK runs without torch.
$(DEVICE_VENV)/.installed: pyproject.toml
	test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/python -m pip install --quiet -e '.[device]'
	touch $(DEVICE_VENV)/.installed

# A third with only the serve extra: proves `edgerec serve` runs without torch or export tooling.
$(SERVE_VENV)/.installed: pyproject.toml
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install --quiet -e '.[serve]'
	touch $(SERVE_VENV)/.installed

demo: $(STAMP)
	$(BIN)/edgerec demo --workdir demo-out

test: $(STAMP) $(DEVICE_VENV)/.installed $(SERVE_VENV)/.installed lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping, so it checks a tree of links shaped
# like the installed package: .typecheck/edgerec/{server,device,tools} -> the real folders.
typecheck: $(STAMP)
	rm -rf .typecheck && mkdir -p .typecheck/edgerec
	for entry in edgerec/*; do ln -s ../../$$entry .typecheck/edgerec/; done
	ln -s ../../server .typecheck/edgerec/server
	ln -s ../../device .typecheck/edgerec/device
	ln -s ../../tools .typecheck/edgerec/tools
	cd .typecheck && ../$(BIN)/mypy --config-file ../pyproject.toml -p edgerec
	MYPYPATH=.typecheck:tests $(BIN)/mypy --config-file pyproject.toml tests

unit: $(STAMP)
	EDGEREC_DEVICE_PYTHON=$(DEVICE_VENV)/bin/python EDGEREC_SERVE_PYTHON=$(SERVE_VENV)/bin/python $(BIN)/python -m pytest -q -m "not slow"

# Long fault and fuzz runs (not part of `make test`).
slow: $(STAMP)
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q -m slow

# Benchmarks: delta payloads against bsdiff4/HDiffPatch/zstd --patch-from/xdelta3 (Debian's CLIs
# are used when installed: apt-get install zstd bsdiff xdelta3), and quantized runtimes.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,dev,bench]'
	$(BIN)/python -m edgerec.tools.bench.delta --out bench-out/delta
	$(BIN)/python -m edgerec.tools.bench.quant --out bench-out/quant

# Predict path: cache hits, policy overhead vs bare onnxruntime, fallback, micro-batching, failures.
bench-predict: $(STAMP)
	$(BIN)/python -m edgerec.tools.bench.predict --out bench-out/predict

# A fleet updating at once: 1,000 fresh devices at 128 kbit/s from one address against a default
# `edgerec serve` (a subprocess), and 64 at 1 Mbit/s; completion vs the link-limited ideal, server CPU and RSS.
bench-fleet: $(STAMP)
	$(BIN)/python -m edgerec.tools.bench.fleet --out bench-out/fleet
	$(BIN)/python -m edgerec.tools.bench.check_latency --out bench-out/fleet

# A staged rollout of v3 to 1,000 simulated devices against a real server, three ways: a v3 that fails its
# golden cases on 30% of devices, one 2 AUC points worse, a good one (docs/rollout-simulation.md).
bench-rollout: $(STAMP)
	$(BIN)/python -m edgerec.tools.bench.rollout --devices 1000 --out bench-out/rollout

# The full fault runs: 200 dropped connections, 100 kill -9 of a syncing device, disk full.
faults: $(STAMP)
	$(BIN)/python -m edgerec.tools.faults --drops 200 --kills 100

# What an update costs on 2g/3g/lte/satellite/wifi links, per codec, on the demo's registry.
profile: $(STAMP)
	test -d demo-out/registry || $(BIN)/edgerec demo --workdir demo-out
	mkdir -p bench-out/profile
	$(BIN)/edgerec profile update --registry demo-out/registry --model ctr --json bench-out/profile/rows.json \
		--csv bench-out/profile/rows.csv --plots bench-out/profile

protos: $(STAMP)
	$(BIN)/python -m edgerec.tools.gen_protos

# The conformance vectors in tests/vectors (checked in; tests/test_vectors.py fails while they are stale).
vectors: $(STAMP)
	$(BIN)/python -m edgerec.tools.vectors --out tests/vectors

clean:
	rm -rf $(VENV) $(DEVICE_VENV) $(SERVE_VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache demo-out
