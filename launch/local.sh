#!/usr/bin/env bash
# Run sftjax-train on this machine. Extra arguments are Hydra overrides:
#   launch/local.sh run_dir=runs/exp1 model=tiny train.max_steps=200
# Simulate an N-device mesh on CPU with SFTJAX_FAKE_DEVICES=N (e.g. 8 with mesh.fsdp=4 mesh.tensor=2).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${SFTJAX_FAKE_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${SFTJAX_FAKE_DEVICES}"
fi
exec .venv/bin/sftjax-train "$@"
