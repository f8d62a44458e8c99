"""One typed run configuration: each setting has one default (the parser's are the dataclasses'), run.json's
settings are its serialisation and read back to an equal config, old run.json files still read, and paper mode
and resume refuse a contradicting flag by name. Model-free and in-process."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import UserError
from src.config.run_config import (
    PAPER_MODE,
    DataConfig,
    InvocationConfig,
    PromptConfig,
    RouteConfig,
    RunConfig,
    SearchConfig,
    flag,
)
from src.config.run_flags import build_parser, flag_names
from src.cli.cli_errors import UsageError
from src.experiments import ICM
from tests.stand_in_pipeline import use_stand_in

# run.json's settings as ICM.py wrote them before --rng-draws, --repair-loop, --post-flip-fix-K, --mp-reduce,
# --paper-mode, --label-absent and --columns existed (the parser of c8c38af^, with --deterministic and --data-dir).
OLD_SETTINGS = {
    "alpha": 30.0, "seed": 27565976, "testbed": "demo", "model": None, "batch_size": 8, "num_seed": 2, "K": 6,
    "consistency_fix_K": 10, "decay": 0.99, "initial_T": 10.0, "final_T": 0.01, "scheduler": "log",
    "data_dir": "/data/icm", "data": None, "deterministic": True, "label_style": "space-in-label", "token_match": "whole",
    "no_gold_consistency": False, "allow_both_false": False, "label_logprobs": "auto", "prompt_layout": "reference",
    "use_vllm": None, "requests_per_minute": None, "tokens_per_minute": None, "num_batches": None, "batch_index": None,
    "cache_dir": None, "no_cache": False,
}
# Older still: no --prompt-layout, no --label-style (the fields tests/test_evaluate_run.py's write_run records).
OLDEST_SETTINGS = {"testbed": "demo", "seed": 7, "K": 6, "model": None, "use_vllm": None, "data_dir": None, "data": None}


def parsed(*argv: str) -> RunConfig:
    return RunConfig.from_args(build_parser().parse_args(list(argv)))


def test_the_command_line_defaults_are_the_dataclasses_defaults():
    assert vars(build_parser().parse_args([])) == RunConfig().flat()
    assert parsed() == RunConfig()
    assert parsed().prompts.prompt_layout == PromptConfig().prompt_layout == "tree"  # no second default elsewhere


def test_every_setting_is_one_flag_and_messages_name_it_as_the_parser_spells_it():
    names = flag_names()
    assert set(names) - {"help"} == set(RunConfig.setting_names())
    one_flag_each = [name for name in RunConfig.setting_names() if name != "use_vllm"]  # --use-vllm and --no-vllm
    assert {name: flag(name) for name in one_flag_each} == {name: names[name] for name in one_flag_each}
    assert flag("use_vllm") == "--use-vllm"


def test_the_scoring_side_takes_the_prompt_settings_from_the_config():
    from core.llm_api.llm import ModelAPI
    from core.llm_api.settings import Settings
    from src.pipeline.pool_scoring import PoolScorer
    from tests.stand_in_pipeline import PromptHashRoute

    config = parsed("--label-style", "reference", "--mp-reduce", "sum", "--label-absent", "floor")
    scorer = PoolScorer(ModelAPI(settings=Settings(), route=PromptHashRoute()), config.prompts)
    assert (scorer.label_style, scorer.token_match, scorer.prompt_layout, scorer.label_absent) == (
        "reference", "whole", "tree", "floor")
    assert config.search.mp_reduce == "sum"  # the energy's, so the search's section


def test_a_config_round_trips_through_run_json():
    config = RunConfig(
        data=DataConfig(testbed="custom", data=Path("/d/x.csv"), columns="question=q", num_batches=4, batch_index=1,
                        num_seed=2, seed=3),
        search=SearchConfig(alpha=5.0, K=7, post_flip_fix_K=2, rng_draws="minimal", scheduler="exp", mp_reduce="sum"),
        prompts=PromptConfig(label_style="reference", prompt_layout="reference", label_absent="floor"),
        route=RouteConfig(model="m", use_vllm=False, requests_per_minute=60.0, cache_dir=Path("/c")),
        invocation=InvocationConfig(output_dir=Path("/out"), no_progress=True),
        paper_mode=False,
    )
    recorded = json.loads(json.dumps(config.to_json()))
    assert RunConfig.from_json(recorded) == replace(config, invocation=InvocationConfig())  # this command's: not recorded
    assert recorded["data"] == "/d/x.csv" and "output_dir" not in recorded and "no_progress" not in recorded
    assert recorded["consistency_key_from_gold"] is False


def test_the_gold_derived_consistency_key_is_recorded():
    assert parsed("--testbed", "truthfulQA").to_json()["consistency_key_from_gold"] is True
    assert parsed("--testbed", "truthfulQA", "--no-gold-consistency").to_json()["consistency_key_from_gold"] is False


def test_an_old_flat_run_json_reads_with_the_behaviour_runs_had_before_the_later_settings():
    config = RunConfig.from_json(OLD_SETTINGS)
    assert config.search == SearchConfig(K=6, rng_draws="minimal", repair_loop="stop-at-first-failure", post_flip_fix_K=None)
    assert config.prompts == PromptConfig(prompt_layout="reference", label_absent="floor")
    assert config.data == DataConfig(testbed="demo", data_dir=Path("/data/icm"), batch_size=8, num_seed=2)
    assert config.route == RouteConfig(deterministic=True) and config.paper_mode is False
    oldest = RunConfig.from_json(OLDEST_SETTINGS)
    assert oldest.prompts.prompt_layout == "reference" and oldest.prompts.label_style == "space-in-label"
    assert oldest.data.seed == 7 and oldest.search.K == 6


def test_paper_mode_sets_the_reference_behaviour_and_refuses_a_contradicting_flag_by_name():
    config = parsed("--paper-mode").with_paper_mode({"paper_mode"})
    assert {name: config.setting(name) for name in PAPER_MODE} == PAPER_MODE
    assert config.search.K == SearchConfig().K  # what paper mode doesn't set stays as given
    with pytest.raises(UsageError, match="^--prompt-layout tree contradicts --paper-mode, which sets --prompt-layout reference; "
                                         "drop one of the two$"):
        parsed("--paper-mode", "--prompt-layout", "tree").with_paper_mode({"paper_mode", "prompt_layout"})
    with pytest.raises(UsageError, match="^--allow-both-false contradicts --paper-mode, which follows the reference"):
        parsed("--paper-mode", "--allow-both-false").with_paper_mode({"paper_mode", "allow_both_false"})
    agreeing = parsed("--paper-mode", "--label-style", "reference").with_paper_mode({"paper_mode", "label_style"})
    assert agreeing.prompts.label_style == "reference"
    assert parsed("--label-style", "reference").with_paper_mode({"label_style"}) == parsed("--label-style", "reference")


def test_resume_keeps_the_recorded_settings_and_refuses_a_changed_one_by_name():
    record = {"settings": OLD_SETTINGS, "data": {"data_dir": "/moved/icm"}}
    current = parsed("--resume", "/runs/r", "--alpha", "5")
    with pytest.raises(UsageError, match=r"^--resume /runs/r: the run was started with --alpha 30\.0, not 5\.0; "
                                         "drop --alpha to resume it, or start a new run with --output-dir$"):
        RunConfig.resumed(record, current, {"resume", "alpha"})
    resumed = RunConfig.resumed(record, parsed("--resume", "/runs/r", "--K", "9", "--alpha", "30"), {"resume", "K", "alpha"})
    assert resumed.search.K == 9 and resumed.search.rng_draws == "minimal" and resumed.prompts.prompt_layout == "reference"
    assert resumed.data.data_dir == Path("/moved/icm")  # run.json's resolved path, not the one typed
    assert resumed.route.deterministic is True and resumed.data.batch_size == 8
    assert resumed.invocation.output_dir == Path("/runs/r") == resumed.invocation.resume


def test_a_run_records_its_config_and_a_resume_reads_it_back(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "2", "--no-progress",
            "--mp-reduce", "sum", "--output-dir", str(out)]
    assert ICM.main(argv) == 0, capsys.readouterr().err
    recorded = json.loads((out / "run.json").read_text())["settings"]
    assert RunConfig.from_json(recorded) == replace(parsed(*argv), invocation=InvocationConfig())
    assert json.loads((out / "summary.json").read_text())["settings"] == recorded
    assert ICM.main(["--resume", str(out), "--mp-reduce", "mean"]) == 2
    assert "the run was started with --mp-reduce 'sum', not 'mean'" in capsys.readouterr().err


@pytest.mark.parametrize("setting, garbage, said", [
    ("prompt_layout", "sideways", "prompt_layout 'sideways' is not one of reference, tree"),
    ("scheduler", None, "scheduler None is not one of log, exp"),
    ("K", "abc", "K 'abc' is not a whole number"),
    ("alpha", float("nan"), "alpha nan is not a finite number"),
    ("batch_size", 8.5, "batch_size 8.5 is not a whole number"),
])
def test_a_resume_refuses_a_recorded_setting_the_command_line_would_refuse(stand_in, tmp_path, capsys, setting, garbage,
                                                                           said):
    """A run.json edited by hand (or damaged) names the file and the setting in one line, before the model loads,
    and the run's files stay as they were (the fresh-user pass found tracebacks here)."""
    from tests.cli_helpers import refused, snapshot

    out = tmp_path / "run"
    assert ICM.main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "2", "--K", "2", "--no-progress",
                     "--output-dir", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    record = json.loads((out / "run.json").read_text())
    record["settings"][setting] = garbage
    (out / "run.json").write_text(json.dumps(record))
    before = snapshot(out)
    code = ICM.main(["--resume", str(out), "--K", "3"])
    line = refused(code, capsys.readouterr().err, f"{out / 'run.json'} is damaged", said)
    assert "restore the file" in line
    assert snapshot(out) == before


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return use_stand_in(monkeypatch, tmp_path)


def user_facing_errors() -> list[type[BaseException]]:
    from core.llm_api.base_llm import ScoringError
    from core.llm_api.faults import PromptTooLong
    from core.llm_api.llm import RouteUnavailable
    from core.llm_api.model_files import ModelFileMissing
    from core.llm_api.response_cache import CacheUnusable
    from core.llm_api.settings import SettingsError
    from src.data.held_out import HeldOutError
    from src.data.testbeds import DataError
    from src.evaluation.eval_model import OtherModel
    from src.experiments.evaluate import EvaluationError
    from src.run_directory.checkpoint import CheckpointError
    from src.run_directory.run_lock import OutputDirLocked, OutputDirUnusable
    from src.run_directory.run_outputs import OutputDirInUse, OutputWriteError

    return [ICM.UsageError, DataError, OutputDirInUse, OutputDirLocked, OutputDirUnusable, OutputWriteError,
            ModelFileMissing, RouteUnavailable, ScoringError, SettingsError, CheckpointError, CacheUnusable, PromptTooLong,
            HeldOutError, EvaluationError, OtherModel]


@pytest.mark.parametrize("error", user_facing_errors(), ids=lambda e: e.__name__)
def test_every_user_facing_error_is_a_user_error_and_main_reports_it_in_one_line(error, monkeypatch, capsys):
    assert issubclass(error, UserError)

    def fails(config, passed):
        raise error.__new__(error)  # skip the constructor's extra arguments (PromptTooLong's server_fix, ...)

    monkeypatch.setattr(ICM, "run", fails)
    assert ICM.main(["--testbed", "demo"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_prompt_too_long_names_what_to_change_on_both_sides(stand_in, monkeypatch, tmp_path, capsys):
    from core.llm_api.faults import PromptTooLong

    def too_long(*args, **kwargs):
        raise PromptTooLong("a prompt is 9,000 tokens, more than the model's 8,192", "or serve the model with a longer context")

    monkeypatch.setattr("src.run.run_in", too_long)
    code = ICM.main(["--testbed", "demo", "--num-batches", "2", "--batch-index", "0", "--num_seed", "2",
                     "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == ("error: a prompt is 9,000 tokens, more than the model's 8,192. Each shard's pool must "
                                       "fit in the context: split the data into more shards (--num-batches, now 2), or "
                                       "serve the model with a longer context\n")


def test_paper_mode_is_recorded_and_kept_on_resume_in_process(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    assert ICM.main(["--testbed", "demo", "--batch_size", "8", "--num_seed", "4", "--K", "2", "--paper-mode",
                     "--label-style", "reference", "--no-progress", "--output-dir", str(out)]) == 0, capsys.readouterr().err
    recorded = RunConfig.from_json(json.loads((out / "run.json").read_text())["settings"])
    assert recorded.paper_mode and {name: recorded.setting(name) for name in PAPER_MODE} == PAPER_MODE
    assert stand_in.instances[-1].options.external_top_k == 20  # the reference's top-k on the hosted route
    assert ICM.main(["--resume", str(out), "--K", "3", "--no-progress"]) == 0, capsys.readouterr().err
    resumed = RunConfig.from_json(json.loads((out / "summary.json").read_text())["settings"])
    assert resumed == replace(recorded, search=replace(recorded.search, K=3))
    assert stand_in.instances[-1].options.prompts == recorded.prompts
    assert ICM.main(["--resume", str(out), "--token-match", "whole"]) == 2
    assert "the run was started with --token-match 'substring', not 'whole'" in capsys.readouterr().err
