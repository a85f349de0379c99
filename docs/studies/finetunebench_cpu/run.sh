#!/usr/bin/env bash
# Reproduces docs/studies/finetunebench_cpu/: the FineTuneBench knowledge-injection preset at scale=cpu on
# SmolLM2-135M-Instruct -- four training formats x two learning rates, each trained 30 epochs and evaluated after
# epochs 1, 5, 10, 20 and 30 on every split -- plus the base model under the same evaluation, and the report.
#   bash docs/studies/finetunebench_cpu/run.sh     (from the repository root, after `make demo` or `make install`)
# STEPS=data,sweep,base,report runs a subset.
# Only cost knobs differ from the preset: FACTS fictional facts (not 200) and one 512-token row per step (so a
# 30-fact epoch is about 3 optimizer steps rather than less than one).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/study_finetunebench_cpu}
FACTS=${FACTS:-24}
LRS=${LRS:-1.0e-5,1.0e-4}
STEPS=${STEPS:-data,sweep,base,report}
DOC=docs/studies/finetunebench_cpu
DATA="$OUT/data"
has() { [[ ",$STEPS," == *",$1,"* ]]; }

if has data; then    # the same generator as `sftjax-data prepare knowledge`, cut to FACTS facts
  "$BIN/sftjax-data" prepare knowledge --limit "$FACTS" --out "$DATA"
fi
COMMON=(experiment=finetunebench scale=cpu train.global_batch_size=1 train.progress=false
        "data.sources.facts.path=$DATA/knowledge_\${data.sources.facts.format}_train.jsonl"
        "eval.suites.knowledge.path=$DATA/knowledge_test.jsonl" eval.batch_size=32)
if has sweep; then   # the preset's four formats x LRS (the paper's APIs expose only a learning-rate multiplier)
  "$BIN/sftjax-train" -m "${COMMON[@]}" "optim.lr=$LRS" run_dir="$OUT"
fi
if has base; then    # epoch 0: the base model on the same questions (yes/no and comparison have a 50 % chance floor)
  "$BIN/sftjax-eval" models=[embedded:smollm2-135m-instruct] model.scan_layers=true eval=knowledge \
      +data=knowledge "eval.suites.knowledge.path=$DATA/knowledge_test.jsonl" eval.batch_size=32 \
      eval.output="$OUT/base_eval.json"
fi
if has report; then
  "$BIN/sftjax-report" "$OUT" "$OUT/base_eval.json" --out "$DOC" \
      --title "FineTuneBench knowledge injection at CPU scale (SmolLM2-135M-Instruct)"
fi
