"""The held-out claims evaluate.py scores, with the run's pool left out when the pool came from the same data.

GSM8K, Alpaca and the demo have no train split, so ICM draws its pool from the very file evaluate.py tests
on. Scoring those claims as test claims inflates every many-shot condition, ICM's most. Whether the test
file *is* the pool's source is decided by content (sha256), never by comparing paths typed in two different
folders; when that can't be decided, evaluation stops and asks, rather than guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from src.cli.cli_errors import UserError
from src.data.data_provenance import BUILT_IN_DEMO, content_hash
from src.data.testbeds import TESTBED_SPECS, data_file_for, demo_records, normalise_records, read_records
from src.run_directory.run_directory import RUN_FILE, SUMMARY_FILE

POOL_SOURCE_FLAG = "--pool-source"


class HeldOutError(UserError):
    pass


@dataclass(frozen=True)
class DataIdentity:
    """``where``: an absolute path, or "built-in demo"; ``sha256``: data_provenance.content_hash of it
    (None for the built-in demo)."""
    where: str
    sha256: Optional[str]

    def same_data(self, other: "DataIdentity") -> bool:
        if self.sha256 is None or other.sha256 is None:
            return self.where == other.where == BUILT_IN_DEMO
        return self.sha256 == other.sha256


def identify(path: Optional[Path]) -> DataIdentity:
    """The identity of a data file or folder (None: the built-in demo). Raises OSError if it can't be read."""
    if path is None:
        return DataIdentity(BUILT_IN_DEMO, None)
    return DataIdentity(str(path.expanduser().resolve()), content_hash(path))


def pool_source(run_data: Optional[dict], legacy_source: Optional[str], explicit: Optional[Path]) -> DataIdentity:
    """Where the run's pool was drawn from.

    ``run_data``: run.json's ``data`` (data_provenance.data_record), None for runs made before it existed;
    ``legacy_source``: summary.json's ``data_source`` as the run typed it; ``explicit``: --pool-source.
    An old run's source is trusted only where that is certain: an absolute path that still exists (hashed
    now). Raises HeldOutError otherwise, naming the flag that settles it.
    """
    recorded = run_data.get("pool_source_sha256") if run_data else None
    if explicit is not None:
        if not explicit.exists():
            raise HeldOutError(f"{POOL_SOURCE_FLAG} {explicit}: no such file or folder")
        given = identify(explicit)
        if recorded is not None and given.sha256 != recorded:
            raise HeldOutError(f"{POOL_SOURCE_FLAG} {explicit} is not the data the run's pool was drawn from: its content "
                               f"differs from {run_data.get('pool_source')}, whose sha256 {RUN_FILE} records; leave "
                               f"{POOL_SOURCE_FLAG} out")
        return given
    if run_data is not None and run_data.get("pool_source") == BUILT_IN_DEMO:
        return DataIdentity(BUILT_IN_DEMO, None)
    if recorded is not None:
        return DataIdentity(str(run_data.get("pool_source")), recorded)
    if run_data is None and legacy_source == BUILT_IN_DEMO:
        return DataIdentity(BUILT_IN_DEMO, None)
    if legacy_source and Path(legacy_source).is_absolute() and Path(legacy_source).exists():
        return identify(Path(legacy_source))
    if not legacy_source:
        why = f"the run records no pool source (no {SUMMARY_FILE})"
    elif not Path(legacy_source).is_absolute():
        why = (f"the run recorded its pool source as {legacy_source!r}, relative to the folder ICM.py ran in, and no "
               "content hash")
    else:
        why = f"the run's pool source {legacy_source} is gone, and the run recorded no content hash"
    raise HeldOutError(f"can't tell whether the test data is the file the run's pool was drawn from: {why}. Pass "
                       f"{POOL_SOURCE_FLAG} FILE naming the data file ICM.py read, so its content can be compared")


def test_data_dir(given: Optional[Path], run_data: Optional[dict], typed: Optional[Path]) -> Optional[Path]:
    """The folder that holds the test split: --data-dir, else the run's (absolute in run.json; an old
    run's ``typed`` --data-dir only if it was absolute). Raises HeldOutError for an old run's relative path."""
    if given is not None:
        return given
    if run_data is not None and run_data.get("data_dir"):
        return Path(run_data["data_dir"])
    if not typed:
        return None
    if not Path(typed).is_absolute():
        raise HeldOutError(f"the run's --data-dir {str(typed)!r} is relative to the folder ICM.py ran in, which {RUN_FILE} "
                           "does not record (a run from before it did): pass --data-dir DIR, or --test-data FILE")
    return Path(typed)


@dataclass
class HeldOut:
    """The test claims (each with a gold ``label``), where they came from, and what was left out."""
    claims: list[dict]
    source: DataIdentity
    pool: DataIdentity
    excluded: int  # claims of the pool's consistency groups, left out because the pool came from this data
    matching_pool_text: int  # kept claims whose prompt is a pool claim's (the same text in other data)


def test_split(testbed: str, test_file: Optional[Path], data_dir: Optional[Path], pool: DataIdentity,
               pool_rows: list[dict], use_gold_consistency: bool,
               columns: Optional[Mapping[str, str]] = None) -> HeldOut:
    """The held-out claims of ``testbed``: ``test_file``, else test_<testbed>.json in ``data_dir`` (the built-in
    demo for the demo testbed), minus the groups of ``pool_rows`` (labels.jsonl) when that data is the pool's.
    ``test_file`` is in any format ``--data`` reads, with the run's ``columns`` ({field: column}) renamed."""
    spec = TESTBED_SPECS[testbed]
    if testbed == "demo" and test_file is None:
        source, records = identify(None), demo_records()
    else:
        if test_file is None:
            if testbed == "custom":
                raise HeldOutError("--testbed custom needs --test-data FILE with gold labels")
            test_file = data_file_for(spec, data_dir)[0].with_name(f"test_{spec.file_stem}.json")
        records = read_records(test_file, columns)
        source = identify(test_file)
    claims = normalise_records(records, spec, source.where, use_gold_consistency)
    same_data = source.same_data(pool)
    pool_groups = {r["consistency_id"] for r in pool_rows}
    kept = [c for c in claims if not (same_data and c["consistency_id"] in pool_groups)]
    if any(c["label"] is None for c in kept):
        raise HeldOutError(f"{source.where}: every test record needs a gold label to measure accuracy")
    if not kept:
        raise HeldOutError(f"{source.where}: no test claims left once the pool's groups are excluded")
    pool_prompts = {r.get("prompt") for r in pool_rows}
    matching = sum(c["prompt"] in pool_prompts for c in kept)
    return HeldOut(kept, source, pool, len(claims) - len(kept), matching)
