# Two commands: `make run` (set up + train the default job) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
JOB     ?= jobs/digits.toml
export OMPI_ALLOW_RUN_AS_ROOT = 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM = 1

.PHONY: setup run lint test accuracy bench bench-ec bench-cluster fashion-data clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/horn run $(JOB)
	@echo "horn is installed in $(VENV); to use horn, mpirun and python from it in this shell: . $(VENV)/bin/activate"

# ruff (ruff.toml): lint and formatting are checked, never rewritten, by `make test`.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q

# Fashion-MNIST from Debian's package, for the accuracy runs and benchmarks.
fashion-data:
	test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }

# The long accuracy runs (minutes each): not part of `make test`.
accuracy: setup fashion-data
	$(BIN)/python -m pytest -q -m slow

bench: setup fashion-data
	$(BIN)/python -m pip install -q torch==2.13.0 || echo "torch not installable: benchmarks skip the PyTorch peer"
	$(BIN)/python bench/step.py
	$(BIN)/python bench/barrier.py
	$(BIN)/python bench/subnet.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/vs_torch.py

# horn vs PyTorch DDP across 2 simulated hosts (horn cluster; needs root) at unlimited,
# 1 Gbit/s and 100 Mbit/s, then the synchronous step's breakdown: about 40 minutes on 2 cores.
bench-cluster: setup fashion-data
	$(BIN)/python -m pip install -q torch==2.13.0 || echo "torch not installable: the DDP peer is missing"
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/cluster_step.py

# EC-DNN against model averaging: about 30 minutes on 2 cores.
bench-ec: setup fashion-data
	$(BIN)/python bench/ec_vs_ma.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis build *.egg-info
