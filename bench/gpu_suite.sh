#!/usr/bin/env bash
# Every accelerator figure of docs/performance.md in one prepared run: each section is its own process (so peak
# memory is per configuration) under its own timeout, writing OUT/<section>.json and .log; bench/targets.py prints
# the figures against the targets last. Try it on the CPU first with tiny shapes:
#   MODEL=58m ROWS=1 SEQ=256 LONG_SEQ=512 STEPS=1 ATTN_SEQS=256,512 ATTN_TOKENS=1024 NEW=16 bench/gpu_suite.sh /tmp/s
# Usage: bench/gpu_suite.sh [OUT] [SECTION ...]
#   sections: attention train train_pallas train_scan train_scan_minimal long decode (default: all, in this order)
# LONG_ATTN (default pallas_gpu) is the attention of the long section: seq LONG_SEQ, ROWS*SEQ/LONG_SEQ rows.
# Offline machine: put the missing wheels in .whl/ (../shared/gpu/README.md); they are installed into /tmp/site.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench_out}; shift || true
SECTIONS=${*:-attention train train_pallas train_scan train_scan_minimal long decode}
MODEL=${MODEL:-llama3_2_1b} ROWS=${ROWS:-8} SEQ=${SEQ:-2048} LONG_SEQ=${LONG_SEQ:-8192} STEPS=${STEPS:-10}
ATTN_SEQS=${ATTN_SEQS:-2048,8192} ATTN_TOKENS=${ATTN_TOKENS:-8192} NEW=${NEW:-128}
PY=${PY:-python3}
mkdir -p "$OUT"
if [ -d .whl ] && ! $PY -c "import grain, hydra" 2>/dev/null; then
  rm -rf /tmp/site && $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
[ -n "${XLA_FLAGS:-}" ] && echo "XLA_FLAGS=$XLA_FLAGS"

section() {  # name, seconds, script args...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T), limit ${limit}s): $*"
  timeout "$limit" $PY "$@" --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
  local rc=$?
  grep -v -e "^WARNING" -e "^I0000" -e "^E0000" "$OUT/$name.log" | tail -n 12
  [ $rc -ne 0 ] && echo "== $name exited $rc (log: $OUT/$name.log)"
  return 0
}

TRAIN=(bench/train_throughput.py --model "$MODEL" --rows "$ROWS" --seq "$SEQ" --steps "$STEPS")
for s in $SECTIONS; do
  case $s in
    attention) section attention 240 bench/attention.py --seqs "$ATTN_SEQS" --tokens "$ATTN_TOKENS" ;;
    train) section train 420 "${TRAIN[@]}" --attention sdpa --hf-compile ;;
    train_pallas) section train_pallas 240 "${TRAIN[@]}" --attention pallas_gpu --skip-hf ;;
    train_scan) section train_scan 240 "${TRAIN[@]}" --attention auto --scan --skip-hf ;;
    train_scan_minimal) section train_scan_minimal 240 "${TRAIN[@]}" --attention auto --scan --remat minimal \
                          --skip-hf ;;
    long) section long 240 bench/train_throughput.py --model "$MODEL" --rows $((ROWS * SEQ / LONG_SEQ)) \
            --seq "$LONG_SEQ" --steps "$STEPS" --attention "${LONG_ATTN:-pallas_gpu}" --skip-hf ;;
    decode) section decode 300 bench/generate_throughput.py --model "$MODEL" --batches 1,32 --new "$NEW" \
              --hf-repeats 1 ;;
    *) echo "unknown section $s" >&2; exit 2 ;;
  esac
done
$PY bench/targets.py "$OUT"
