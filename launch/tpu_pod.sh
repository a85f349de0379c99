#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU VM pod at once (gcloud compute tpus tpu-vm ssh --worker=all).
#
#   launch/tpu_pod.sh --project P --zone Z --tpu NAME [--workdir DIR] [--venv DIR] [--gcloud-flag FLAG]... [--dry-run] \
#       -- sftjax-train run_dir=/mnt/shared/runs/exp1 model=llama2_7b ...
#
# Each worker runs `cd WORKDIR && PATH=VENV/bin:$PATH COMMAND`. For sftjax-train/-eval/-generate, mesh.auto=true is
# appended (unless the command sets mesh.auto): jax.distributed.initialize() then finds the pod's coordinator, process
# count and process index itself from the TPU VM metadata, so nothing else is configured per worker.
# run_dir must be one shared directory that every worker mounts at the same absolute path (Filestore/NFS, or a GCS
# bucket through gcsfuse): every process writes its checkpoint shards there, process 0 the metrics. gs:// URLs are
# refused: run_dir is a local path (pathlib) in sftjax.
# --dry-run prints the exact gcloud command (shell-quoted, one line) instead of running it.
set -euo pipefail

prog=tpu_pod.sh
usage() {  # the comment block at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}
q() {  # one word for a POSIX shell: as it is when it is plain, else in single quotes (' written as '\'')
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}
qall() {  # words quoted by q, separated by spaces
  local sep=""
  for word in "$@"; do printf '%s' "$sep"; q "$word"; sep=" "; done
}
die() {  # exit 2: a usage/configuration error
  echo "$prog: $*" >&2
  exit 2
}

project="" zone="" tpu="" workdir="~/sftjax" venv=".venv" dry_run=0
gcloud_flags=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) [[ $# -ge 2 ]] || die "--project needs a value"; project="$2"; shift 2 ;;
    --project=*) project="${1#*=}"; shift ;;
    --zone) [[ $# -ge 2 ]] || die "--zone needs a value"; zone="$2"; shift 2 ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --tpu) [[ $# -ge 2 ]] || die "--tpu needs a value"; tpu="$2"; shift 2 ;;
    --tpu=*) tpu="${1#*=}"; shift ;;
    --workdir) [[ $# -ge 2 ]] || die "--workdir needs a value"; workdir="$2"; shift 2 ;;
    --workdir=*) workdir="${1#*=}"; shift ;;
    --venv) [[ $# -ge 2 ]] || die "--venv needs a value"; venv="$2"; shift 2 ;;
    --venv=*) venv="${1#*=}"; shift ;;
    --gcloud-flag) [[ $# -ge 2 ]] || die "--gcloud-flag needs a value"; gcloud_flags+=("$2"); shift 2 ;;
    --gcloud-flag=*) gcloud_flags+=("${1#*=}"); shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the command to run goes after --; see --help)" ;;
  esac
done

[[ -n "$project" ]] || die "missing --project (the Google Cloud project that owns the TPU VM)"
[[ -n "$zone" ]] || die "missing --zone (the TPU VM's zone, e.g. us-central2-b)"
[[ -n "$tpu" ]] || die "missing --tpu (the TPU VM's name, as in: gcloud compute tpus tpu-vm list --zone ZONE)"
[[ $# -gt 0 ]] || die "missing the command to run on every worker, after -- (e.g. -- sftjax-train run_dir=/mnt/shared/runs/x)"

cmd=("$@")
case "$(basename -- "${cmd[0]}")" in
  sftjax-train|sftjax-eval|sftjax-generate)
    has_auto=0 has_run_dir=0
    for arg in "${cmd[@]:1}"; do
      case "$arg" in
        mesh.auto=*) has_auto=1 ;;
        run_dir=gs://*) die "run_dir='${arg#run_dir=}': gs:// is not supported (run_dir is a local path); mount the bucket on every worker (gcsfuse) and pass run_dir=/MOUNT/..." ;;
        run_dir=/*) has_run_dir=1 ;;
        run_dir=*) die "run_dir='${arg#run_dir=}' is relative: each worker would write to its own disk; pass an absolute path on storage every worker mounts" ;;
      esac
    done
    if [[ "$(basename -- "${cmd[0]}")" == sftjax-train && $has_run_dir == 0 ]]; then
      die "missing run_dir=/SHARED/PATH in the sftjax-train command (a directory every worker mounts at that path)"
    fi
    [[ $has_auto == 1 ]] || cmd+=("mesh.auto=true")
    ;;
esac

# The remote command, every word quoted for the worker's login shell. A leading ~/ in workdir stays unquoted so
# that it expands to the remote home.
if [[ "$workdir" == "~" ]]; then
  remote_cd="cd ~"
elif [[ "$workdir" == "~/"* ]]; then
  remote_cd="cd ~/$(q "${workdir#\~/}")"
else
  remote_cd="cd $(q "$workdir")"
fi
remote="$remote_cd && PATH=$(q "$venv")/bin:\"\$PATH\" $(qall "${cmd[@]}")"

gcloud=(gcloud compute tpus tpu-vm ssh "$tpu" --project "$project" --zone "$zone" --worker=all "${gcloud_flags[@]}"
        --command "$remote")

if [[ $dry_run == 1 ]]; then
  qall "${gcloud[@]}"
  printf '\n'
  exit 0
fi
exec "${gcloud[@]}"
