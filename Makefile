# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sftjax needs Python 3.11+, found " + sys.version.split()[0]'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# A short real training of the tiny model on the bundled fixture sources (about a minute on 2 CPU cores).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/sftjax-train run_dir=runs/demo model=tiny model.hidden_size=128 model.intermediate_size=352 \
		model.num_layers=4 train.max_steps=150 train.log_every=10 optim.lr=3e-3 optim.warmup_ratio=0.05

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/matmul_peak.py
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) runs
