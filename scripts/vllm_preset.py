"""Print the `vllm serve` command of a preset in configs/vllm_config.yaml, one argument per line."""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vllm_config.yaml"
# Config keys that describe the preset rather than configure vLLM.
NOT_FLAGS = {"model", "hardware"}


def serve_command(preset: str, config_path: Path = CONFIG) -> list[str]:
    config = yaml.safe_load(config_path.read_text())
    presets = config["presets"]
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}: choose one of {', '.join(presets)} (from {config_path})")
    settings = {**config.get("defaults", {}), **presets[preset]}
    command = ["vllm", "serve", settings["model"]]
    for key, value in settings.items():
        if key in NOT_FLAGS or value is False or value is None:
            continue
        command.append("--" + key.replace("_", "-"))
        if value is not True:
            command.append(str(value))
    return command


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: vllm_preset.py PRESET")
    print("\n".join(serve_command(sys.argv[1])))
