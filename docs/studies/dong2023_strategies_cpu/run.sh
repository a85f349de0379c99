#!/usr/bin/env bash
# Reproduces docs/studies/dong2023_strategies_cpu/: the Dong et al. 2023 strategies preset at scale=cpu on
# SmolLM2-135M-Instruct, the base model under the same evaluation, a follow-up with the learning-rate schedule
# restarted at every stage, and the report. About 2 hours on a 2-core CPU.
#   bash docs/studies/dong2023_strategies_cpu/run.sh       (from the repository root, after `make demo` or `make install`)
# STEPS=sweep,base,followup,report runs a subset.
# Only cost knobs differ from the preset: every source at amount 1/128 (math 39, code 23, general 30 examples;
# 3 epochs per stage as in the preset) and smaller evaluation sets (first 40 math problems, first 40 HumanEval tasks
# with 256 new tokens, 64 held-out examples per loss suite).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/study_dong2023_strategies_cpu}
STEPS=${STEPS:-sweep,base,followup,report}
DOC=docs/studies/dong2023_strategies_cpu
EVAL=(eval.batch_size=20
      eval.suites.math.limit=40 eval.suites.code.limit=40 eval.suites.code.max_new_tokens=256
      eval.suites.math_loss.limit=64 eval.suites.code_loss.limit=64 eval.suites.general_loss.limit=64)
has() { [[ ",$STEPS," == *",$1,"* ]]; }

[ -f data/prepared/math_train.jsonl ] || "$BIN/sftjax-data" prepare

if has sweep; then   # the preset's four strategies (one warmup + cosine schedule over each run's stages)
  "$BIN/sftjax-train" -m experiment=dong2023_strategies scale=cpu strategy.amount=1/128 run_dir="$OUT" \
      train.progress=false "${EVAL[@]}"
fi
if has base; then    # the base model, prompted with the same Vicuna v1.1 template as the fine-tuned runs
  "$BIN/sftjax-eval" models=[embedded:smollm2-135m-instruct] model.scan_layers=true eval=dong \
      data.seq_len=512 data.template=vicuna_v1.1 "${EVAL[@]}" eval.output="$OUT/base_eval.json"
fi
if has followup; then  # mixed_sequential with the schedule restarted at the general stage (no HumanEval: at floor)
  "$BIN/sftjax-train" -m experiment=dong2023_strategies scale=cpu strategy=mixed_sequential strategy.schedule=stage \
      strategy.amount=1/128 run_dir="$OUT-schedule_stage" train.progress=false "${EVAL[@]}" '~eval.suites.code'
fi
if has report; then
  "$BIN/sftjax-report" "$OUT" "$OUT-schedule_stage" "$OUT/base_eval.json" --out "$DOC" \
      --title "Dong et al. 2023 strategies at CPU scale (SmolLM2-135M-Instruct)"
fi
