#!/usr/bin/env bash
# Start vLLM for ICM with a preset from configs/vllm_config.yaml (prefix caching always on).
#   scripts/launch_vllm_server.sh 8B|70B|405B [--dry-run] [--data-parallel N] [--nodes N] [extra `vllm serve` arguments]
# --data-parallel N: N replicas of the model behind one server (vLLM's --data-parallel-size), on N x TP GPUs.
# --nodes N: spread the model over N nodes with pipeline parallelism on Ray (start the Ray cluster first:
#   `ray start --head` here, `ray start --address=HEAD:6379` on the others; see VLLM_DEPLOYMENT_GUIDE.md).
# Extra arguments come last, so they override the preset (e.g. --port 8001 --host 0.0.0.0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 8B|70B|405B [--dry-run] [extra vllm serve args]" >&2
  exit 2
fi
preset=$1
shift
dry_run=0
extra=()
scale=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --data-parallel|--nodes)
      if ! [[ "${2:-}" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: $1 takes a whole number of replicas or nodes, e.g. $1 2" >&2
        exit 2
      fi
      if [ "$1" = "--data-parallel" ]; then
        scale+=(--data-parallel-size "$2")
      else
        scale+=(--pipeline-parallel-size "$2" --distributed-executor-backend ray)
      fi
      shift ;;
    *) extra+=("$1") ;;
  esac
  shift
done
# The project venv has PyYAML; on a GPU box, vLLM brings it along.
if [ -z "${PYTHON:-}" ] && [ -x "$here/../.venv/bin/python" ]; then PYTHON="$here/../.venv/bin/python"; fi
PYTHON=${PYTHON:-python3}
command_text=$("$PYTHON" "$here/vllm_preset.py" "$preset")
mapfile -t command <<< "$command_text"
command+=("${scale[@]}" "${extra[@]}")
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
if ! command -v vllm > /dev/null; then
  echo "error: vllm is not installed here: pip install vllm (on a GPU machine), then run this again" >&2
  exit 2
fi
exec "${command[@]}"
