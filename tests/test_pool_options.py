"""--true-share (a pool with an exact share of gold-True claims) and --pool-seed (the pool drawn by its own seed):
the draw itself on the paper's files, and whole runs through ICM.main on the stand-in route (no model)."""
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from src.config.run_config import DataConfig, RunConfig
from src.data.testbeds import TESTBED_SPECS, DataError, group_claims, load_testbed_claims, sample_pool
from src.data.true_share_pool import sample_pool_with_true_share, true_quota
from src.experiments import ICM
from src.run import draw_pool
from tests.cli_helpers import refused
from tests.stand_in_pipeline import use_stand_in

SHARES = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


def true_count(pool) -> int:
    return sum(claim["label"] == 1 for claim in pool)


def records(pool) -> list[int]:
    return [claim["record"] for claim in pool]


@pytest.mark.parametrize("testbed", ["truthfulQA", "gsm8k"])
@pytest.mark.parametrize("share", SHARES)
def test_the_pool_holds_exactly_the_asked_share_of_gold_true_claims(data_dir, testbed, share):
    claims, source, _ = load_testbed_claims(testbed, data_dir, None, True)
    pool = sample_pool_with_true_share(claims, TESTBED_SPECS[testbed], 64, share, random.Random(3), source)
    assert len(pool) == 64 and len(set(records(pool))) == 64  # no claim twice
    assert true_count(pool) == true_quota(share, 64)
    assert all(claim in claims for claim in pool)
    # Each group's claims sit together in the pool.
    runs = [claim["consistency_id"] for i, claim in enumerate(pool)
            if i == 0 or pool[i - 1]["consistency_id"] != claim["consistency_id"]]
    assert len(runs) == len(set(runs))


@pytest.mark.parametrize("testbed", ["alpaca", "truthfulQA-preference"])
@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.75, 1.0])
def test_pair_testbeds_get_the_share_and_keep_as_many_pairs_whole_as_it_allows(data_dir, testbed, share):
    """Every group of these testbeds is one True and one False order of a pair: a share s keeps min(True, False)
    pairs whole, the most any pool of that share can."""
    claims, source, _ = load_testbed_claims(testbed, data_dir, None, True)
    pool = sample_pool_with_true_share(claims, TESTBED_SPECS[testbed], 40, share, random.Random(5), source)
    trues = true_count(pool)
    assert len(pool) == 40 and trues == true_quota(share, 40)
    sizes = Counter(len(group) for group in group_claims(pool).values())
    assert sizes[2] == min(trues, 40 - trues)


def test_whole_groups_are_kept_where_the_share_allows(data_dir):
    """TruthfulQA's groups hold 0 to 4 True claims, so at a moderate share whole groups fill the pool."""
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    for share in (0.25, 0.5, 0.75):
        pool = sample_pool_with_true_share(claims, TESTBED_SPECS["truthfulQA"], 64, share, random.Random(11), source)
        assert set(Counter(c["consistency_id"] for c in pool).values()) == {4}, share


def test_the_share_is_rounded_half_up_on_the_written_decimal():
    assert [true_quota(s, 10) for s in (0.0, 0.05, 0.15, 0.25, 0.35, 1.0)] == [0, 1, 2, 3, 4, 10]
    assert true_quota(0.5, 7) == 4 and true_quota(0.2, 256) == 51


def test_the_pool_follows_its_rng(data_dir):
    claims, source, _ = load_testbed_claims("gsm8k", data_dir, None, True)
    spec = TESTBED_SPECS["gsm8k"]
    def draw(seed: int) -> list[int]:
        return records(sample_pool_with_true_share(claims, spec, 32, 0.3, random.Random(seed), source))

    assert draw(1) == draw(1) and draw(1) != draw(2)


def test_too_few_claims_of_a_class_or_no_gold_labels_are_refused_naming_the_flag():
    claims, source, _ = load_testbed_claims("demo", None, None, True)  # 64 claims, 32 True
    spec = TESTBED_SPECS["demo"]
    with pytest.raises(DataError, match=r"^--true-share 0\.9 asks for 43 gold-True claims in a pool of --batch_size 48, "
                                        r"and built-in demo has only 32: lower --true-share, or lower --batch_size$"):
        sample_pool_with_true_share(claims, spec, 48, 0.9, random.Random(0), source)
    with pytest.raises(DataError, match=r"asks for 43 gold-False claims .* only 32: raise --true-share"):
        sample_pool_with_true_share(claims, spec, 48, 0.1, random.Random(0), source)
    unlabelled = [{**claim, "label": None} for claim in claims]
    with pytest.raises(DataError, match=r"^--true-share 0\.5 draws the pool by gold label, and built-in demo has none"):
        sample_pool_with_true_share(unlabelled, spec, 8, 0.5, random.Random(0), source)
    with pytest.raises(DataError, match="--batch_size 6 must be a multiple of demo's group size 4"):
        sample_pool_with_true_share(claims, spec, 6, 0.5, random.Random(0), source)


def test_claims_without_gold_never_enter_a_true_share_pool():
    claims, source, _ = load_testbed_claims("demo", None, None, True)
    partly = [{**claim, "label": None} if claim["record"] % 3 == 0 else claim for claim in claims]
    pool = sample_pool_with_true_share(partly, TESTBED_SPECS["demo"], 32, 0.5, random.Random(2), source)
    assert len(pool) == 32 and true_count(pool) == 16 and all(claim["label"] is not None for claim in pool)


# --- draw_pool: --pool-seed, and the default path unchanged --------------------------------------------------------

def test_without_the_new_options_the_pool_and_the_search_rng_are_the_plain_seeds(data_dir):
    claims, source, _ = load_testbed_claims("truthfulQA", data_dir, None, True)
    rng = random.Random(27)
    expected = sample_pool(claims, TESTBED_SPECS["truthfulQA"], 16, rng, source)
    pool, search_rng, _ = draw_pool(DataConfig(testbed="truthfulQA", data_dir=data_dir, batch_size=16, seed=27))
    assert records(pool) == records(expected) and search_rng.getstate() == rng.getstate()


def test_a_pool_seed_gives_one_pool_to_every_seed_and_the_search_rng_stays_the_seeds(data_dir):
    def drawn(seed, pool_seed=None, true_share=None):
        return draw_pool(DataConfig(testbed="truthfulQA", data_dir=data_dir, batch_size=16, seed=seed,
                                    pool_seed=pool_seed, true_share=true_share))

    pool_1, rng_1, _ = drawn(1, pool_seed=9)
    pool_2, rng_2, _ = drawn(2, pool_seed=9)
    assert records(pool_1) == records(pool_2) == records(drawn(9)[0])
    assert rng_1.getstate() == drawn(1)[1].getstate() != rng_2.getstate()  # as without --pool-seed
    assert records(drawn(1)[0]) != records(pool_1)
    shared = drawn(1, pool_seed=9, true_share=0.25)[0]
    assert records(shared) == records(drawn(2, pool_seed=9, true_share=0.25)[0]) and true_count(shared) == 4


# --- whole runs ------------------------------------------------------------------------------------------------------

@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    return use_stand_in(monkeypatch, tmp_path)


def demo_run(out: Path, *flags: str) -> list[str]:
    return ["--testbed", "demo", "--batch_size", "16", "--num_seed", "4", "--K", "3", "--no-progress",
            "--output-dir", str(out), *flags]


def rows(out: Path, name: str = "labels.jsonl") -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_runs_of_two_seeds_with_one_pool_seed_label_the_same_pool_differently(stand_in, tmp_path, capsys):
    first, second, plain, same = (tmp_path / name for name in ("first", "second", "plain", "same"))
    assert ICM.main(demo_run(first, "--seed", "1", "--pool-seed", "7")) == 0, capsys.readouterr().err
    assert ICM.main(demo_run(second, "--seed", "2", "--pool-seed", "7")) == 0, capsys.readouterr().err
    assert [r["record"] for r in rows(first)] == [r["record"] for r in rows(second)]
    def picked(out: Path) -> list[tuple]:
        return [(line["uid"], line["new_label"]) for line in rows(out, "log.jsonl")]

    assert picked(first) != picked(second)  # the search's draws follow --seed
    # --pool-seed S --seed S is the run without --pool-seed, to the byte.
    assert ICM.main(demo_run(plain, "--seed", "7")) == 0
    assert ICM.main(demo_run(same, "--seed", "7", "--pool-seed", "7")) == 0
    for name in ("labels.jsonl", "log.jsonl"):
        assert (plain / name).read_bytes() == (same / name).read_bytes()


def test_a_run_records_that_its_pool_used_gold_and_says_so(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    assert ICM.main(demo_run(out, "--true-share", "0.25")) == 0
    err = capsys.readouterr().err
    assert "note: --true-share 0.25 drew the pool by its gold labels, so these labels are not unsupervised" in err
    for name in ("run.json", "summary.json"):
        settings = json.loads((out / name).read_text())["settings"]
        assert settings["gold_used_by"] == ["true_share"] and settings["true_share"] == 0.25
        assert settings["consistency_key_from_gold"] is False
    assert sum(r["gold_label"] is True for r in rows(out)) == 4
    plain = tmp_path / "plain"
    assert ICM.main(demo_run(plain)) == 0
    assert "--true-share" not in capsys.readouterr().err
    assert json.loads((plain / "run.json").read_text())["settings"]["gold_used_by"] == []


def test_gold_used_by_names_every_use_of_gold():
    def used(**data) -> list[str]:
        return RunConfig(data=DataConfig(**data)).to_json()["gold_used_by"]

    assert used(testbed="truthfulQA") == ["consistency_key"]
    assert used(testbed="truthfulQA", true_share=0.3) == ["consistency_key", "true_share"]
    assert used(testbed="truthfulQA", no_gold_consistency=True, true_share=0.3) == ["true_share"]
    assert used(testbed="gsm8k", pool_seed=4) == []


def test_a_resume_keeps_the_pool_options_and_refuses_changing_them(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    assert ICM.main(demo_run(out, "--true-share", "0.75", "--pool-seed", "3")) == 0
    pool = [r["record"] for r in rows(out)]
    capsys.readouterr()
    for flag, value in (("--true-share", "0.5"), ("--pool-seed", "4")):
        code = ICM.main(["--resume", str(out), "--K", "5", flag, value])
        refused(code, capsys.readouterr().err, f"the run was started with {flag}")
    assert ICM.main(["--resume", str(out), "--K", "5", "--no-progress"]) == 0, capsys.readouterr().err
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert (settings["true_share"], settings["pool_seed"], settings["K"]) == (0.75, 3, 5)
    assert [r["record"] for r in rows(out)] == pool and len(rows(out, "log.jsonl")) == 5


@pytest.mark.parametrize("flags, said", [
    (["--true-share", "0.2"], ("--true-share 0.2 contradicts --paper-mode, which draws the pool as the reference does "
                               "(whole groups at random by --seed); drop one of the two")),
    (["--pool-seed", "5"], "--pool-seed 5 contradicts --paper-mode, which draws the pool as the reference does"),
])
def test_paper_mode_refuses_the_pool_options(stand_in, tmp_path, capsys, flags, said):
    out = tmp_path / "run"
    code = ICM.main(demo_run(out, "--paper-mode", *flags))
    refused(code, capsys.readouterr().err, said)
    assert not (out / "run.json").exists()


def test_a_run_that_asks_for_more_of_a_class_than_the_data_has_stops_before_any_model_call(stand_in, tmp_path, capsys):
    out = tmp_path / "run"
    code = ICM.main(["--testbed", "demo", "--batch_size", "48", "--num_seed", "2", "--K", "1", "--true-share", "0.9",
                     "--no-progress", "--output-dir", str(out)])
    refused(code, capsys.readouterr().err, "--true-share 0.9 asks for 43 gold-True claims", "lower --true-share")
    assert stand_in.instances == [] and not (out / "run.json").exists()


def test_custom_data_without_labels_is_refused_with_the_fix(stand_in, tmp_path, capsys):
    data = tmp_path / "claims.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i // 2}", "choice": f"c{i}", "consistency_id": i // 2}) + "\n"
                            for i in range(8)))
    code = ICM.main(["--testbed", "custom", "--data", str(data), "--batch_size", "4", "--num_seed", "2", "--K", "1",
                     "--true-share", "0.5", "--no-progress", "--output-dir", str(tmp_path / "run")])
    refused(code, capsys.readouterr().err, "--true-share 0.5 draws the pool by gold label", "has none",
            "--columns label=COLUMN")
