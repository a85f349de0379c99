#!/usr/bin/env bash
# Reproduces docs/studies/dong2023_amounts_cpu/: the Dong et al. 2023 data-amount preset at scale=cpu on
# SmolLM2-135M-Instruct -- each ability against the amount of its own SFT data (one source alone), against the
# same amounts of all sources mixed, plus the base model under the same evaluation, and the report.
#   bash docs/studies/dong2023_amounts_cpu/run.sh      (from the repository root, after `make demo` or `make install`)
# STEPS=alone,mixed,general,base,report runs a subset; AMOUNTS, MIXED_AMOUNTS and GENERAL_AMOUNTS pick the grid.
# Only cost knobs differ from the preset: amounts 1/256 ... 1/64 of each source rather than 1/256 ... 1, all sources
# mixed and general alone at two amounts only, and smaller evaluation sets (first 40 math problems, 64 held-out
# examples per loss suite). HumanEval generation is left out: every strategies-study model, the base included,
# scored 0/40, while code loss moved. Step counts (sftjax-data inspect: 27 math, 35 code, 30 general steps of
# 4 x 512 tokens at 1/64). Measured: 96 min wall time (jobs of 5-16 min, each with a 3.5 min evaluation). Each
# doubling of AMOUNTS adds about 40 min (1/32) and 75 min (1/16).
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/study_dong2023_amounts_cpu}
AMOUNTS=${AMOUNTS:-1/256,1/128,1/64}
MIXED_AMOUNTS=${MIXED_AMOUNTS:-1/256,1/128}
GENERAL_AMOUNTS=${GENERAL_AMOUNTS:-1/256,1/64}
STEPS=${STEPS:-alone,mixed,general,base,report}
DOC=docs/studies/dong2023_amounts_cpu
EVAL=(eval.batch_size=20 '~eval.suites.code' eval.suites.math.limit=40
      eval.suites.math_loss.limit=64 eval.suites.code_loss.limit=64 eval.suites.general_loss.limit=64)
COMMON=(experiment=dong2023_amounts scale=cpu train.progress=false "${EVAL[@]}")
has() { [[ ",$STEPS," == *",$1,"* ]]; }

[ -f data/prepared/math_train.jsonl ] || "$BIN/sftjax-data" prepare

if has alone; then    # math alone and code alone at every amount
  "$BIN/sftjax-train" -m "${COMMON[@]}" 'strategy.specialized=[math],[code]' "strategy.amount=$AMOUNTS" \
      run_dir="$OUT/alone"
fi
if has mixed; then    # the three sources mixed, each at the same amount (the paper's "composition" runs)
  "$BIN/sftjax-train" -m "${COMMON[@]}" 'strategy.specialized=[math,code,general]' \
      "strategy.amount=$MIXED_AMOUNTS" run_dir="$OUT/mixed"
fi
if has general; then  # general alone: does general ability flatten with its own amount?
  "$BIN/sftjax-train" -m "${COMMON[@]}" 'strategy.specialized=[general]' "strategy.amount=$GENERAL_AMOUNTS" \
      run_dir="$OUT/general"
fi
if has base; then     # the base model, prompted with the same Vicuna v1.1 template as the fine-tuned runs
  "$BIN/sftjax-eval" models=[embedded:smollm2-135m-instruct] model.scan_layers=true eval=dong \
      data.seq_len=512 data.template=vicuna_v1.1 "${EVAL[@]}" eval.output="$OUT/base_eval.json"
fi
if has report; then
  "$BIN/sftjax-report" "$OUT"/alone "$OUT"/mixed "$OUT"/general "$OUT/base_eval.json" --out "$DOC" \
      --title "Dong et al. 2023 data amounts at CPU scale (SmolLM2-135M-Instruct)"
fi
