"""The routes are built from one registry, each from its own settings dataclass; the route is chosen in one
place; a route's constructor does no network I/O; and API_TOP_K's lower bound refuses only the hosted route.

Model-free: no route here is opened against a model (the embedded route's constructor is replaced by a recorder).
"""
import dataclasses
import socket
from pathlib import Path

import pytest

import core.llm_api.embedded_llm as embedded_llm
import core.llm_api.llm as llm
import core.llm_api.routes as routes
from core.llm_api.base_llm import RouteStats, ScoringError, ScoringRoute
from core.llm_api.llm import ModelAPI
from core.llm_api.multi_endpoint import MultiEndpointVLLM
from core.llm_api.openai_llm import ExternalAPIClient
from core.llm_api.retry_waits import RetryPolicy
from core.llm_api.route_settings import EmbeddedRouteSettings, ExternalRouteSettings, RouteChoices, VLLMRouteSettings
from core.llm_api.routes import ROUTES, RouteUnavailable, build_route, choose_route
from core.llm_api.settings import DEFAULTS, Settings, SettingsError, load_settings
from core.llm_api.vllm_llm import VLLMClient
from src.config.run_config import PromptConfig, RouteConfig
from src.pipeline.pipeline import ScoringOptions, ScoringPipeline
from tests.conftest import closed_port_url

ROUTE_VARIABLES = ("VLLM_BASE_URL", "LLAMA_API_BASE", "API_KEY", "VLLM_API_KEY", "API_TOP_K")

# Every field a route reads, each set away from its default, so that a field taken from the wrong setting shows.
CUSTOM = Settings(
    vllm_base_url="http://a:1", llama_api_base="http://h:2", api_key="sk-h", vllm_api_key="tok-v",
    vllm_timeout_seconds=11.0, vllm_max_prompts_per_request=7, vllm_max_retries=3, vllm_backoff_seconds=0.5,
    vllm_retry_seconds=12.0, vllm_backoff_max_seconds=4.0, vllm_health_poll_seconds=2.5,
    api_requests_per_minute=90.0, api_tokens_per_minute=9000.0, api_top_k=4, api_concurrency=3, api_timeout_seconds=13.0,
    api_max_retries=2, api_backoff_seconds=0.25, api_backoff_max_seconds=6.0, api_retry_seconds=14.0,
    embedded_threads=2, embedded_slots=3, embedded_ctx_per_slot=1024, embedded_cache_ram_mib=16,
)
CHOICES = RouteChoices(model="m", top_k=9, deterministic=True, exact_label_logprobs=False, show_progress=False)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in ROUTE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ICM_SECRETS_FILE", str(tmp_path / "no-such-secrets"))


class Recorder(ScoringRoute):
    """Stands in for a route's class: remembers what it was built from, touches nothing."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        self.stats = RouteStats()


# -- the registry builds each route from its own settings dataclass --------------------------------------------

def test_each_route_settings_dataclass_takes_its_values_from_the_settings():
    assert set(ROUTES) == {"vllm", "external", "embedded"}
    assert ROUTES["vllm"].settings_from(CUSTOM, CHOICES) == VLLMRouteSettings(
        base_urls=("http://a:1",), api_key="tok-v", model="m", top_k=9, deterministic=True, exact_label_logprobs=False,
        timeout_seconds=11.0, max_prompts_per_request=7, retry=RetryPolicy("VLLM", 0.5, 4.0, 12.0, 3), health_poll_seconds=2.5)
    assert ROUTES["external"].settings_from(CUSTOM, CHOICES) == ExternalRouteSettings(
        base_url="http://h:2", api_key="sk-h", model="m", top_k=4, concurrency=3, timeout_seconds=13.0,
        retry=RetryPolicy("API", 0.25, 6.0, 14.0, 2), requests_per_minute=90.0, tokens_per_minute=9000.0)
    gguf = Path(__file__)  # any existing path stands for the model file here
    embedded = ROUTES["embedded"].settings_from(CUSTOM, dataclasses.replace(CHOICES, model=None))
    assert dataclasses.replace(embedded, model_path=gguf) == EmbeddedRouteSettings(
        model_path=gguf, top_k=9, deterministic=True, slots=3, ctx_per_slot=1024, cache_ram_mib=16, threads=2,
        show_progress=False)
    assert embedded.model_path.suffix == ".gguf"
    # Keys stay out of any printed settings.
    assert "tok-v" not in repr(ROUTES["vllm"].settings_from(CUSTOM, CHOICES))
    assert "sk-h" not in repr(ROUTES["external"].settings_from(CUSTOM, CHOICES))


def test_the_registry_builds_each_route_from_its_dataclass(monkeypatch):
    vllm = build_route("vllm", CUSTOM, CHOICES)
    try:
        assert type(vllm) is VLLMClient and vllm.base_url == "http://a:1" and vllm.top_k == 9 and vllm.deterministic
        assert vllm.retry_policy == RetryPolicy("VLLM", 0.5, 4.0, 12.0, 3) and vllm.max_prompts_per_request == 7
        assert vllm.health_poll_seconds == 2.5 and vllm.requested_model == "m" and not vllm.want_exact_label_logprobs
    finally:
        vllm.close()

    replicas = build_route("vllm", dataclasses.replace(CUSTOM, vllm_base_url="http://a:1, http://b:2"), CHOICES)
    try:
        assert type(replicas) is MultiEndpointVLLM and [e.base_url for e in replicas.endpoints] == ["http://a:1", "http://b:2"]
        assert replicas.policy == RetryPolicy("VLLM", 0.5, 4.0, 12.0, 3)
        # each replica retries once, then hands its work to the others
        assert all(e.retry_policy == RetryPolicy("VLLM", 0.5, 4.0, 12.0, 1) for e in replicas.endpoints)
    finally:
        replicas.close()

    hosted = build_route("external", CUSTOM, CHOICES)
    try:
        assert type(hosted) is ExternalAPIClient and hosted.url == "http://h:2/v1/completions" and hosted.top_k == 4
        assert hosted.retry_policy == RetryPolicy("API", 0.25, 6.0, 14.0, 2)
        assert (hosted.limiter.requests_per_minute, hosted.limiter.tokens_per_minute) == (90.0, 9000.0)
        assert hosted.limiter.max_pause_seconds == 14.0  # API_RETRY_SECONDS bounds a provider's pause too
    finally:
        hosted.close()

    monkeypatch.setattr(embedded_llm, "EmbeddedLlamaCpp", Recorder)
    embedded = build_route("embedded", CUSTOM, dataclasses.replace(CHOICES, model=None))
    assert type(embedded) is Recorder and embedded.kwargs == {}
    [built_from] = embedded.args
    assert type(built_from) is EmbeddedRouteSettings and (built_from.slots, built_from.ctx_per_slot) == (3, 1024)


def test_every_default_is_the_settings_dataclass_own():
    assert load_settings() == DEFAULTS == Settings()  # nothing set: each value is the dataclass's default
    vllm = VLLMRouteSettings.from_settings(DEFAULTS, RouteChoices())
    assert vllm.retry == RetryPolicy("VLLM", 1.0, 10.0, 600.0, None) and vllm.timeout_seconds == 900.0
    hosted = ExternalRouteSettings.from_settings(DEFAULTS, RouteChoices(model="m"))
    assert hosted.retry == RetryPolicy("API", 1.0, 30.0, 300.0, 5) and hosted.top_k == 5
    # The route-side types restate none of them.
    for kind in (RetryPolicy, VLLMRouteSettings, ExternalRouteSettings, EmbeddedRouteSettings):
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(kind)), kind


# -- the route is chosen in one place ---------------------------------------------------------------------------

CHOSEN = {  # (use_vllm, VLLM_BASE_URL set, LLAMA_API_BASE set) -> the route, or the refusal's words
    (None, True, True): "vllm", (None, True, False): "vllm", (None, False, True): "external", (None, False, False): "embedded",
    (True, True, True): "vllm", (True, True, False): "vllm", (True, False, True): "--use-vllm needs VLLM_BASE_URL",
    (True, False, False): "--use-vllm needs VLLM_BASE_URL",
    (False, True, True): "external", (False, False, True): "external",
    (False, True, False): "LLAMA_API_BASE is not set", (False, False, False): "LLAMA_API_BASE is not set",
}


@pytest.mark.parametrize("use_vllm, vllm_set, hosted_set", sorted(CHOSEN, key=str))
def test_the_route_is_chosen_once_and_the_pipeline_builds_that_one(monkeypatch, use_vllm, vllm_set, hosted_set):
    settings = Settings(vllm_base_url="http://v:1" if vllm_set else None, llama_api_base="http://h:2" if hosted_set else None)
    built, asked = [], []

    def fake(name):
        class Fake(Recorder):
            pass

        Fake.name = name
        return routes.RouteEntry(lambda s, choices: (s, choices), lambda made: built.append(name) or Fake(made))

    monkeypatch.setattr(routes, "ROUTES", {name: fake(name) for name in ("vllm", "external", "embedded")})
    real_choose = choose_route
    monkeypatch.setattr(llm, "choose_route", lambda *a, **k: asked.append(a) or real_choose(*a, **k))
    expected = CHOSEN[(use_vllm, vllm_set, hosted_set)]
    options = ScoringOptions(RouteConfig(model="m", use_vllm=use_vllm), PromptConfig(), show_progress=False, cache_dir=None)
    if expected not in ROUTES:
        with pytest.raises(RouteUnavailable, match=expected):
            ScoringPipeline(options, settings)
        with pytest.raises(RouteUnavailable, match=expected):
            choose_route(settings, use_vllm)
        assert built == []
        return
    with ScoringPipeline(options, settings) as pipeline:
        assert pipeline.model_api.route_name == expected == choose_route(settings, use_vllm)
    assert built == [expected] and len(asked) == 1  # one choice, one route built


# -- a route's constructor does no network I/O ------------------------------------------------------------------

def test_a_route_constructor_makes_no_round_trip():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.3)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = Settings(vllm_base_url=f"{url},{url}", llama_api_base=url, vllm_api_key="k")
        built = [VLLMClient(url, VLLMRouteSettings.from_settings(settings, RouteChoices())),
                 build_route("vllm", settings, RouteChoices()),  # the multi-endpoint route
                 build_route("external", settings, RouteChoices(model="m"))]
        try:
            with pytest.raises(socket.timeout):
                listener.accept()  # nobody connected: the kernel would have queued any connection attempt
        finally:
            for route in built:
                route.close()


def test_constructing_against_a_closed_port_raises_nothing_and_opening_it_does():
    closed = closed_port_url()
    route = build_route("vllm", Settings(vllm_base_url=closed), RouteChoices())
    assert not route.connected and route.server_version is None and route.model == ""
    route.close()
    # The round trips are open()'s: against the same closed port it fails at once (no retry budget).
    with pytest.raises(ScoringError, match="cannot connect to"):
        ModelAPI(settings=Settings(vllm_base_url=closed, vllm_retry_seconds=0), deterministic=True)


# -- API_TOP_K below 2 refuses the hosted route only ------------------------------------------------------------

def test_api_top_k_below_two_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("API_TOP_K", "1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.3)
        monkeypatch.setenv("LLAMA_API_BASE", f"http://127.0.0.1:{listener.getsockname()[1]}")
        settings = load_settings()
        with pytest.raises(SettingsError, match=r"API_TOP_K='1' \(in .* or the environment\) must be at least 2: the label "
                                                "score compares"):
            ModelAPI("m", settings=settings)
        with pytest.raises(socket.timeout):
            listener.accept()  # refused before any request
    monkeypatch.setenv("API_TOP_K", "2")
    assert ExternalRouteSettings.from_settings(load_settings(), RouteChoices(model="m")).top_k == 2


def test_api_top_k_of_one_does_not_stop_a_vllm_or_embedded_run(monkeypatch):
    monkeypatch.setenv("API_TOP_K", "1")
    monkeypatch.setenv("VLLM_BASE_URL", "http://127.0.0.1:9")
    settings = load_settings()  # API_TOP_K applies to the hosted route only
    route = build_route("vllm", settings, RouteChoices())
    assert route.top_k == 20  # the vLLM route asks for its own k
    route.close()
    monkeypatch.setattr(embedded_llm, "EmbeddedLlamaCpp", Recorder)
    assert type(build_route("embedded", settings, RouteChoices())) is Recorder
    # Paper mode's 20 replaces API_TOP_K before the hosted route is built, so it is not refused either.
    hosted = build_route("external", settings.overridden(api_top_k=20), RouteChoices(model="m"))
    assert hosted.top_k == 20
    hosted.close()


def test_api_top_k_of_one_on_the_hosted_route_is_one_error_line_and_leaves_no_run(monkeypatch, capsys, tmp_path):
    from src.experiments.ICM import main
    from src.run_directory.run_outputs import OUTPUT_FILES

    monkeypatch.setenv("API_TOP_K", "1")
    monkeypatch.setenv("LLAMA_API_BASE", closed_port_url())
    out = tmp_path / "out"
    code = main(["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "2", "--model", "m", "--no-progress",
                 "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: API_TOP_K='1' (in "), err
    assert not [name for name in OUTPUT_FILES if (out / name).exists()]


def test_the_hosted_route_still_needs_a_model():
    with pytest.raises(ScoringError, match="the hosted API route needs --model"):
        build_route("external", Settings(llama_api_base="http://h:2"), RouteChoices())


@pytest.mark.parametrize("route", ["vllm", "embedded"])
def test_api_top_k_of_one_is_not_what_stops_a_vllm_or_embedded_run_at_the_cli(monkeypatch, capsys, tmp_path, route):
    """Model-free: the run then stops at the next thing it lacks (no server; no model file), not at API_TOP_K."""
    from src.experiments.ICM import main

    monkeypatch.setenv("API_TOP_K", "1")
    flags = ["--testbed", "demo", "--batch_size", "4", "--num_seed", "2", "--K", "2", "--no-progress",
             "--output-dir", str(tmp_path / "out")]
    if route == "vllm":
        monkeypatch.setenv("VLLM_BASE_URL", closed_port_url())
        monkeypatch.setenv("VLLM_RETRY_SECONDS", "0")
        expected = "cannot connect to"
    else:
        flags += ["--model", str(tmp_path / "absent.gguf")]
        expected = "the embedded route needs a .gguf file path"
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "API_TOP_K" not in err and expected in err, err
