"""Every numeric flag of every entry point is checked where it is parsed: a number out of range, not finite, or
of the wrong kind is refused in one ``error:`` line with exit code 2, and where 0 is allowed, --help says what it
means. ``--alpha -30`` was once taken, and rewarded labels the model disagrees with."""
import json

import pytest

from src.experiments import ICM, evaluate, plot, sweep
from tests.cli_helpers import call, load_script, refused
from tests.fake_runs import make_run

SCRIPTS = {name: load_script(name) for name in ("export_labels", "merge_labels", "benchmark_icm", "simulate_prefix_cache",
                                                 "measure_cache_drift", "measure_order_sensitivity", "serve_local")}
ENTRY_POINTS = {"ICM": ICM, "evaluate": evaluate, "plot": plot, "sweep": sweep, **SCRIPTS}


DEMO = ["--testbed", "demo", "--batch_size", "4", "--num_seed", "2"]
# entry point, flags, what the error line must say. {run} is a finished run's folder.
CASES = [
    ("ICM", [*DEMO, "--alpha", "-30"], "--alpha -30.0 must be a positive number"),
    ("ICM", [*DEMO, "--alpha", "0"], "--alpha 0.0 must be a positive number"),
    ("ICM", [*DEMO, "--alpha", "inf"], "--alpha inf must be a finite number"),
    ("ICM", [*DEMO, "--alpha", "thirty"], "argument --alpha: invalid float value: 'thirty'"),
    ("ICM", [*DEMO, "--seed", "-1"], "--seed -1 must not be negative"),
    ("ICM", ["--testbed", "demo", "--batch_size", "0"], "--batch_size 0 must be a positive number"),
    ("ICM", ["--testbed", "demo", "--num_seed", "-2"], "--num_seed -2 must not be negative"),
    ("ICM", [*DEMO, "--K", "2.5"], "argument --K: invalid int value: '2.5'"),
    ("ICM", [*DEMO, "--decay", "1.5"], "--decay 1.5 must be in (0, 1]"),
    ("ICM", [*DEMO, "--decay", "nan"], "--decay nan must be a finite number"),
    ("ICM", [*DEMO, "--initial_T=-inf"], "--initial_T -inf must be a finite number"),
    ("ICM", [*DEMO, "--requests-per-minute", "0"], "--requests-per-minute 0.0 must be a positive number"),
    ("ICM", [*DEMO, "--num-batches", "0", "--batch-index", "0"], "--num-batches 0 must be at least 1"),
    ("ICM", [*DEMO, "--num-batches", "2", "--batch-index", "-1"], "--batch-index -1 must not be negative"),
    ("evaluate", ["--run-dir", "{run}", "--limit", "0"], "--limit 0 must be at least 1"),
    ("evaluate", ["--run-dir", "{run}", "--limit", "-5"], "--limit -5 must be at least 1"),
    ("evaluate", ["--run-dir", "{run}", "--max-demos", "-3"], "--max-demos -3 must be at least 1"),
    ("evaluate", ["--run-dir", "{run}", "--max-demos", "0"], "--max-demos 0 must be at least 1"),
    ("evaluate", ["--run-dir", "{run}", "--seed", "-1"], "--seed -1 must not be negative"),
    ("benchmark_icm", ["--K", "0"], "--K 0 must be at least 1"),
    ("benchmark_icm", ["--seed", "-7"], "--seed -7 must not be negative"),
    ("benchmark_icm", ["--layout-pool", "-4"], "--layout-pool -4 must not be negative"),
    ("benchmark_icm", ["--rss-K", "-1"], "--rss-K -1 must not be negative"),
    ("benchmark_icm", ["--K", "30", "--rss-K", "25"], "--rss-K 25 must be above --K 30"),
    ("simulate_prefix_cache", ["--iterations", "0"], "--iterations 0 must be at least 1"),
    ("simulate_prefix_cache", ["--block-size", "0"], "--block-size 0 must be at least 1"),
    ("simulate_prefix_cache", ["--pools", "64", "-8"], "--pools -8 must be at least 1"),
    ("simulate_prefix_cache", ["--pools", "6"], "--pools 6 must be a multiple of TruthfulQA's group size 4"),
    ("simulate_prefix_cache", ["--capacities", "0"], "--capacities 0 must be at least 1"),
    ("simulate_prefix_cache", ["--seed", "-1"], "--seed -1 must not be negative"),
    ("measure_cache_drift", ["--pool", "0"], "--pool 0 must be at least 2"),
    ("measure_cache_drift", ["--pool", "3"], "--pool 3 must be even"),
    ("measure_cache_drift", ["--testbed", "mmlu"], "argument --testbed: invalid choice: 'mmlu'"),
    ("measure_order_sensitivity", ["--permutations", "-1"], "--permutations -1 must not be negative"),
    ("measure_order_sensitivity", ["--pools", "0"], "--pools 0 must be at least 1"),
    ("serve_local", ["--port", "70000"], "--port 70000 must be in [0, 65535]"),
    ("serve_local", ["--slots", "0"], "--slots 0 must be at least 1"),
    ("serve_local", ["--ctx-per-slot", "16"], "--ctx-per-slot 16 must be at least 256"),
    ("serve_local", ["--threads", "0"], "--threads 0 must be at least 1"),
    ("export_labels", ["{run}"], "the following arguments are required: --format"),
    ("merge_labels", ["{run}", "--output"], "argument --output: expected one argument"),
    ("plot", ["{run}", "--colour", "red"], "unrecognized arguments: --colour red"),
    ("sweep", ["--out", "{run}-sweep", "--jobs", "0"], "--jobs 0 must be at least 1"),
    ("sweep", ["--out", "{run}-sweep", "--cell", "-1"], "--cell -1 must not be negative"),
    ("sweep", ["--out", "{run}-sweep", "--alphas", "-30"], "--alphas -30: --alpha -30.0 must be a positive number"),
    ("sweep", ["--out", "{run}-sweep", "--seeds", "1.5"], "--seeds 1.5: argument --seed: invalid int value: '1.5'"),
    ("sweep", ["--out", "{run}-sweep", "--seeds", "1", "--", "--K", "-1"], "after --: --K -1 must not be negative"),
]


@pytest.mark.parametrize("entry, flags, message", CASES, ids=[f"{e} {' '.join(f)}" for e, f, _ in CASES])
def test_a_number_out_of_range_or_a_bad_flag_is_one_error_line(entry, flags, message, tmp_path, capsys, data_dir):
    run = make_run(tmp_path / "run")
    flags = [f.format(run=run) for f in flags]
    if entry in ("ICM",):
        flags += ["--output-dir", str(tmp_path / "out")]
    if entry in ("benchmark_icm", "simulate_prefix_cache", "measure_order_sensitivity"):
        flags += ["--data-dir", str(data_dir)]
    code, err = call(ENTRY_POINTS[entry], flags, capsys)
    refused(code, err, message)
    assert not (tmp_path / "out").exists()  # ICM: refused before it made its folder


def test_a_resumed_run_whose_recorded_alpha_is_negative_is_refused(tmp_path, capsys):
    # Settings read back from run.json get the same checks as flags.
    run = make_run(tmp_path / "run")
    recorded = json.loads((run / "run.json").read_text())
    recorded["settings"]["alpha"] = -30.0
    (run / "run.json").write_text(json.dumps(recorded))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, err = call(ICM, ["--resume", run], capsys)
    refused(code, err, "--alpha -30.0 must be a positive number")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# Flags whose 0 is an ordinary value, not a special case.
ZERO_IS_ORDINARY = {"--seed", "--batch-index"}


@pytest.mark.parametrize("entry", ["ICM", "sweep", "benchmark_icm", "evaluate", "measure_cache_drift", "measure_order_sensitivity",
                                   "serve_local", "simulate_prefix_cache"])
def test_help_says_what_0_means_wherever_0_is_allowed(entry):
    from src.cli.cli_numbers import Bounded

    parser = ENTRY_POINTS[entry].build_parser()
    numeric = [action for action in parser._actions if isinstance(action, Bounded)]
    for action in numeric:
        flag = action.option_strings[0]
        if action.allows(0) and flag not in ZERO_IS_ORDINARY:
            assert "0" in (action.help or ""), f"{entry} {flag}: --help does not say what 0 means"


def test_every_numeric_flag_is_checked():
    from src.cli.cli_numbers import Bounded

    for entry, module in ENTRY_POINTS.items():
        for action in module.build_parser()._actions:
            if action.type in (int, float):
                assert isinstance(action, Bounded), f"{entry} {action.option_strings[0]} takes any {action.type.__name__}"
