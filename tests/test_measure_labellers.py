"""scripts/measure_labellers_synthetic.py: the labellers through sweep.py on the synthetic model (no real model)."""
from __future__ import annotations

import csv
import importlib.util

import src.run
from tests.conftest import REPO_ROOT

DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "icm"


def load_script():
    spec = importlib.util.spec_from_file_location("measure_labellers", REPO_ROOT / "scripts" / "measure_labellers_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_labellers_are_measured_on_one_pool_and_the_real_pipeline_is_restored(tmp_path, capsys):
    script = load_script()
    real = src.run.ScoringPipeline
    out = tmp_path / "sweep"
    assert script.main(["--out", str(out), "--data-dir", str(DATA_DIR), "--pool", "16", "--seeds", "1", "2",
                        "--true-shares", "0.5", "--K", "40"]) == 0
    assert src.run.ScoringPipeline is real
    printed = capsys.readouterr().out
    assert "pool-label accuracy against gold" in printed and "seed agreement (per setting)" in printed
    with (out / "sweep_summary.csv").open() as file:
        settings = {row["labeller"]: row for row in csv.DictReader(file)}
    assert set(settings) == {"random", "bootstrap", "bootstrap-consistency", "icm"}
    # On the synthetic model's default (labels that agree with gold predict each other), every labeller that
    # listens to the model beats random labels, and its seeds agree more than random labels' do.
    for labeller in ("bootstrap", "bootstrap-consistency", "icm"):
        assert float(settings[labeller]["pool_label_accuracy_mean"]) > float(settings["random"]["pool_label_accuracy_mean"]) + 0.2
        assert float(settings[labeller]["seed_agreement_mean"]) > float(settings["random"]["seed_agreement_mean"])
