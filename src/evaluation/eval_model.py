"""Which model evaluate.py scores with: the one the run labelled with, unless told otherwise.

The route is chosen from the environment (VLLM_BASE_URL, LLAMA_API_BASE), so without this check a vLLM run
evaluated in a shell without VLLM_BASE_URL would be scored by the embedded SmolLM2, and an embedded run
evaluated with it set by the server's model, with nothing to show for it but a wrong number.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Optional

from src.cli.cli_errors import UserError
from core.llm_api.llm import RouteUnavailable, choose_route
from core.llm_api.settings import Settings
from src.run_directory.run_directory import EVAL_FILE, SUMMARY_FILE

ALLOW_OTHER_MODEL = "--allow-other-model"
# ScoringOptions.use_vllm that makes choose_route pick each route, when the environment offers it.
ROUTE_SWITCH: dict[str, Optional[bool]] = {"vllm": True, "external": False, "embedded": None}
WHAT_EACH_ROUTE_NEEDS = {
    "vllm": "set VLLM_BASE_URL to a server of {model} (the run used {endpoint})",
    "external": "set LLAMA_API_BASE to the API the run used ({endpoint})",
    "embedded": "unset VLLM_BASE_URL and LLAMA_API_BASE (environment and SECRETS)",
}


class OtherModel(UserError):
    """Evaluation would score with another route or model than the run's."""


@dataclass(frozen=True)
class ModelIdentity:
    route: Optional[str]
    model: Optional[str]
    endpoint: Optional[str] = None

    def describe(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.model or 'an unknown model'} on the {self.route or 'unknown'} route{where}"

    def as_dict(self) -> dict:
        return asdict(self)


def recorded_model(summary: Optional[dict]) -> Optional[ModelIdentity]:
    """The route, model and endpoint summary.json records, or None when it records no route and model."""
    if not summary or not isinstance(summary.get("route"), str) or not isinstance(summary.get("model"), str):
        return None
    endpoint = summary.get("endpoint")
    return ModelIdentity(summary["route"], summary["model"], endpoint if isinstance(endpoint, str) else None)


def _override(this: str) -> str:
    return f"or pass {ALLOW_OTHER_MODEL} to evaluate with {this} on purpose ({EVAL_FILE} then records the difference)"


def choose_evaluation_route(run: Optional[ModelIdentity], settings: Settings, allow_other: bool) -> tuple[Optional[bool], str]:
    """(ScoringOptions.use_vllm, route name) for the evaluation: the run's route, checked before any model is
    opened. Raises OtherModel when this environment gives another route (or the run's is unknown), unless
    ``allow_other``; then it is the route the environment gives."""
    if run is not None and run.route in ROUTE_SWITCH:
        use_vllm = ROUTE_SWITCH[run.route]
        try:
            if choose_route(settings, use_vllm) == run.route:
                return use_vllm, run.route
        except RouteUnavailable:
            pass
    here = choose_route(settings, None)
    if allow_other:
        return None, here
    if run is None:
        raise OtherModel(f"can't tell which model the run labelled with (its {SUMMARY_FILE} records no route and model), "
                         f"so evaluating here, on the {here} route, may use another: {_override(f'the {here} route')}")
    needs = WHAT_EACH_ROUTE_NEEDS.get(run.route, "score on the run's route").format(
        model=run.model, endpoint=run.endpoint or "endpoint not recorded")
    raise OtherModel(f"the run labelled with {run.describe()}, but here evaluate.py would score on the {here} route: "
                     f"{needs}, {_override(f'the {here} route')}")


def model_to_request(run: Optional[ModelIdentity], route: str, given: Optional[str], run_model_flag: Optional[str]) -> Optional[str]:
    """What to pass as ``model`` when opening ``route``: --model if given; on the run's own route, the run's model
    (its served name on a server route, its --model, a .gguf path or None, on the embedded one); else the route's
    default."""
    if given is not None:
        return given
    if run is None or route != run.route:
        return None
    return run.model if route in ("vllm", "external") else run_model_flag


def check_model(run: Optional[ModelIdentity], used: ModelIdentity, allow_other: bool) -> dict[str, bool]:
    """Which of route, model and endpoint differ from the run's (all True when the run's are unknown). Raises
    OtherModel when the route or model differs, unless ``allow_other``; then it warns on stderr."""
    if run is None:
        differs = {"route": True, "model": True, "endpoint": True}
    else:
        differs = {field: getattr(run, field) != getattr(used, field) for field in ("route", "model", "endpoint")}
    if run is not None and (differs["route"] or differs["model"]):
        if not allow_other:
            raise OtherModel(f"the run labelled with {run.describe()}, but {used.describe()} answers here: evaluate with "
                             f"the run's model (drop --model, or serve {run.model}), {_override(used.model or 'it')}")
    if run is None or differs["route"] or differs["model"]:
        print(f"warning: evaluating with {used.describe()}, not the model the run labelled with "
              f"({run.describe() if run else 'unknown'}), as {ALLOW_OTHER_MODEL} asked", file=sys.stderr)
    elif differs["endpoint"]:
        print(f"note: the run's server was {run.endpoint}; evaluating with the same model at {used.endpoint}",
              file=sys.stderr)
    return differs
