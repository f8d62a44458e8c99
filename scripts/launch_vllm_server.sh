#!/usr/bin/env bash
# Start vLLM for ICM with a preset from configs/vllm_config.yaml (prefix caching always on).
#   scripts/launch_vllm_server.sh 8B|70B|405B [--dry-run] [extra `vllm serve` arguments]
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
for arg in "$@"; do
  if [ "$arg" = "--dry-run" ]; then dry_run=1; else extra+=("$arg"); fi
done
# The project venv has PyYAML; on a GPU box, vLLM brings it along.
if [ -z "${PYTHON:-}" ] && [ -x "$here/../.venv/bin/python" ]; then PYTHON="$here/../.venv/bin/python"; fi
PYTHON=${PYTHON:-python3}
command_text=$("$PYTHON" "$here/vllm_preset.py" "$preset")
mapfile -t command <<< "$command_text"
command+=("${extra[@]}")
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
