#!/usr/bin/env bash
# Run sftjax-train on this machine. Arguments after the options are Hydra overrides (or -m for a sweep):
#   launch/local.sh run_dir=runs/exp1 model=tiny train.max_steps=200
# Options (before the overrides):
#   --processes N  one run as N processes on loopback, to try multi-process training on one machine: process i gets
#                  SFTJAX_COORDINATOR=127.0.0.1:PORT, SFTJAX_NUM_PROCESSES=N, SFTJAX_PROCESS_ID=i (read by
#                  sftjax.parallel.mesh for jax.distributed.initialize), JAX_PLATFORMS=cpu (N processes cannot
#                  share one accelerator) and, where taskset exists and N <= cores, its own share of the CPU cores
#                  (XLA sizes its thread pool to the cores it may use). Output lines are prefixed [pI].
#   --port PORT    the coordinator port for --processes (default: a free one)
#   --dry-run      print the command(s), one per process, instead of running them
# Simulate an N-device mesh on CPU with SFTJAX_FAKE_DEVICES=N (e.g. 8 with mesh.fsdp=4 mesh.tensor=2); with
# --processes each process gets N devices. SFTJAX_TRAIN overrides the command (default .venv/bin/sftjax-train).
set -euo pipefail

die() {  # exit 2: a usage error
  echo "local.sh: $*" >&2
  exit 2
}
q() {  # one word for a POSIX shell: as it is when it is plain, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
qall() {
  local sep=""
  for word in "$@"; do printf '%s' "$sep"; q "$word"; sep=" "; done
}

processes=1 port="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes|-n) [[ $# -ge 2 ]] || die "$1 needs a value"; processes="$2"; shift 2 ;;
    --processes=*) processes="${1#*=}"; shift ;;
    --port) [[ $# -ge 2 ]] || die "--port needs a value"; port="$2"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --) shift; break ;;
    *) break ;;  # the first override (or a Hydra flag such as -m)
  esac
done
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "--processes: expected a positive integer, got '$processes'"
[[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || die "--port: expected a port number, got '$port'"

cd "$(dirname "$0")/.."
if [[ -n "${SFTJAX_FAKE_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${SFTJAX_FAKE_DEVICES}"
fi
read -r -a train <<< "${SFTJAX_TRAIN:-.venv/bin/sftjax-train}"

if (( processes == 1 )); then
  if (( dry_run )); then
    [[ -z "${SFTJAX_FAKE_DEVICES:-}" ]] || printf 'XLA_FLAGS=%s ' "$(q "$XLA_FLAGS")"
    qall "${train[@]}" "$@"; printf '\n'
    exit 0
  fi
  exec "${train[@]}" "$@"
fi

if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
cores=$(nproc 2>/dev/null || echo 1)
pin=0
if command -v taskset > /dev/null && (( processes <= cores )); then pin=1; fi

build_cmd() {  # sets cmd: the command line of process $1
  cmd=(env SFTJAX_COORDINATOR="127.0.0.1:$port" SFTJAX_NUM_PROCESSES="$processes" SFTJAX_PROCESS_ID="$1"
       JAX_PLATFORMS=cpu)
  [[ -z "${SFTJAX_FAKE_DEVICES:-}" ]] || cmd+=("XLA_FLAGS=$XLA_FLAGS")
  if (( pin )); then
    cmd+=(taskset -c "$(( $1 * cores / processes ))-$(( ($1 + 1) * cores / processes - 1 ))")
  fi
  cmd+=("${train[@]}" "${overrides[@]}")
}
overrides=("$@")

if (( dry_run )); then
  for (( i = 0; i < processes; i++ )); do build_cmd "$i"; qall "${cmd[@]}"; printf '\n'; done
  exit 0
fi

pids=()
stop() {  # SIGTERM: each process saves a checkpoint and exits
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
}
trap 'stop; wait; exit 130' INT TERM
for (( i = 0; i < processes; i++ )); do
  build_cmd "$i"
  "${cmd[@]}" > >(sed -u "s/^/[p$i] /") 2>&1 &  # env and taskset exec: $! is the training process
  pids+=($!)
done
status=0
for (( i = 0; i < processes; i++ )); do
  rc=0
  wait -n "${pids[@]}" || rc=$?
  if (( rc != 0 && status == 0 )); then
    status=$rc
    echo "local.sh: a process exited with status $rc; stopping the others" >&2
    stop
  fi
done
exit "$status"
