"""Finished ICM.py runs written without a model, for testing the companion scripts (evaluate, plot, export,
merge) on the files they read. The settings come from ICM.py's own parser and the rows from run_outputs'
writers, so the files have the shape ICM.py gives them."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional, Sequence

from src.config.run_config import RunConfig
from src.experiments import ICM
from src.run_directory.run_outputs import jsonl, label_rows
from src.search.annealing import seed_claims
from src.data.testbeds import TESTBED_SPECS, load_testbed_claims, sample_pool, shard_pool

DEMO_FLAGS = ["--testbed", "demo", "--batch_size", "8", "--num_seed", "8", "--K", "2"]


def make_run(out: Path, flags: Sequence[str] = DEMO_FLAGS, *, route: str = "embedded", model: str = "SmolLM2-135M-Instruct.Q4_1",
             endpoint: Optional[str] = None) -> Path:
    """A finished run of ICM.py ``flags`` in ``out``: run.json, labels.jsonl (every claim labelled), log.jsonl
    and summary.json, as the route ``route`` and model ``model`` would have left them."""
    args = ICM.build_parser().parse_args(list(flags))
    settings = RunConfig.from_args(args).to_json()
    claims, source, _ = load_testbed_claims(args.testbed, args.data_dir, args.data, True)
    rng = random.Random(args.seed)
    if args.num_batches is None:
        records = sample_pool(claims, TESTBED_SPECS[args.testbed], args.batch_size, rng, source)
    else:
        records = shard_pool(claims, TESTBED_SPECS[args.testbed], args.num_batches, args.batch_index, args.seed, source)
    pool = seed_claims(records, len(records) - len(records) % 2, rng)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"format": 2, "run_id": "f" * 32, "settings": settings,
                                              "pool_fingerprint": "0" * 64}, indent=2))
    (out / "labels.jsonl").write_text(jsonl(label_rows(pool, {uid: 0.5 for uid in pool})))
    log = [{"iter": i, "energy": 1.0 + i, "train_accuracy": 0.5, "inconsistent_num": 1, "pool_size": len(pool)}
           for i in range(args.K)]
    (out / "log.jsonl").write_text(jsonl(log))
    summary = {"testbed": args.testbed, "data_source": source, "settings": settings, "route": route, "model": model,
               **({"endpoint": endpoint} if endpoint else {}), "stopped_early": None, "iterations": args.K,
               "final": {"labeled": len(pool), "pool_size": len(pool)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out


def make_shards(folder: Path, count: int = 2) -> list[Path]:
    """The ``count`` finished shards of one sharded demo run."""
    return [make_run(folder / f"shard{i}", ["--testbed", "demo", "--num_seed", "2", "--K", "2", "--num-batches", str(count),
                                            "--batch-index", str(i)])
            for i in range(count)]
