"""The search's full state on disk after every iteration, so a killed run resumes exactly where it was.

``run.json`` is written once, before any model call: the run's identity (a random id), the settings it was
started with, a fingerprint of its pool, and the data it read (absolute paths and the pool source's sha256); a
resume rewrites it only to record a new --K (a bootstrap run's --bootstrap-rounds) or where the data is now (rewrite_run). ``checkpoint.json`` is rewritten after the seeds are scored and
after every iteration: the labels, the current metric, the iteration and flip counters (a baseline's rounds and
labels changed, whether its labels stopped changing, and a bootstrap labeller's labellings so far and the cycle
it stopped on, absent from older checkpoints), the RNG state and the scoring cost so far (cost_ledger.py),
with the run's id and pool fingerprint, so a checkpoint copied from another run is refused. Both are written
atomically (a temporary file, fsynced, renamed over the old one), so a crash leaves the old or the new,
never half. A run killed before its first checkpoint resumes from its seeds.

Everything read back is checked before it is used: a damaged file stops the resume with the file, what is
wrong with it and what to do, and no valid log line is ever dropped silently.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

from core.errors import UserError
from src.data.claims import Claim
from src.run_directory.run_directory import RUN_FILE, RunDirectory
from src.search.annealing import Claims, SearchState

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # format 1 (no run id) was written before run identities existed
METRIC_FIELDS = ("train_prob", "inconsistent_num", "train_accuracy", "train_size")
# Agreement with gold is null when no claim of the pool has a gold label (custom data without labels).
METRIC_FIELDS_MAY_BE_NULL = ("train_accuracy",)


def _metric_value(field: str, value: object) -> bool:
    if value is None:
        return field in METRIC_FIELDS_MAY_BE_NULL
    return isinstance(value, (int, float)) and not isinstance(value, bool)
START_AGAIN = "start the run again with the same flags and --overwrite"


class CheckpointError(UserError):
    pass


# Every field of a claim that the search, the consistency rules or the monitoring read (src/search,
# pool_scoring.py, prompts.py), and how a message names it. Labels are the search's own, so they are not here.
FINGERPRINT_FIELDS = {
    "prompt": "the claims' text (their prompts)",
    "consistency_id": "the consistency groups",
    "consistency_key": "the consistency keys (the consistency rules)",
    "vanilla_label": "the gold labels",
}
# The fingerprint names each field as claims were dicts when it was defined (the reference's names): it is a file
# format, so the names stay; this is the Claim attribute each one reads.
FINGERPRINT_ATTRIBUTES = {"prompt": "text", "consistency_id": "group_id", "consistency_key": "consistency_key",
                          "vanilla_label": "gold_label"}
FINGERPRINT_VERSION = "v2"


def pool_fingerprint(claims: Claims) -> str:
    """Identifies the pool: which claims, in which order (uid), and every field the search reads of them.

    ``v2 prompt=<hex> consistency_id=<hex> ...``: one 64-bit digest per field over the pool in uid order, so a
    mismatch can say which kind of field changed.
    """
    uids = sorted(claims)
    parts = []
    for field in FINGERPRINT_FIELDS:
        values = json.dumps([[uid, getattr(claims[uid], FINGERPRINT_ATTRIBUTES[field])] for uid in uids])
        parts.append(f"{field}={hashlib.sha256(values.encode()).hexdigest()[:16]}")
    return " ".join([FINGERPRINT_VERSION, *parts])


def _is_current(fingerprint: str) -> bool:
    return fingerprint.startswith(FINGERPRINT_VERSION + " ")


def _fingerprint_v1(claims: Claims) -> str:
    """The fingerprint of runs started before version 2: uids, groups and prompts only."""
    digest = hashlib.sha256()
    for uid in sorted(claims):
        claim = claims[uid]
        digest.update(json.dumps([uid, claim.group_id, claim.text]).encode())
    return digest.hexdigest()


def pool_change(saved: str, claims: Claims) -> Optional[str]:
    """What differs between the pool fingerprinted as ``saved`` and ``claims``, in words; None if nothing does.

    A fingerprint of version 1 (no ``v2`` in front) covers only uids, groups and prompts, and is checked as it
    was written.
    """
    if not _is_current(saved):
        return None if saved == _fingerprint_v1(claims) else "other claims, groups or prompts"
    now = pool_fingerprint(claims)
    if saved == now:
        return None
    before, after = dict(p.split("=", 1) for p in saved.split()[1:]), dict(p.split("=", 1) for p in now.split()[1:])
    changed = [words for field, words in FINGERPRINT_FIELDS.items() if before.get(field) != after.get(field)]
    if len(changed) == len(FINGERPRINT_FIELDS):
        return "other claims"
    return " and ".join(changed) + " changed"


def check_resumed_pool(run: dict[str, Any], claims: Claims, out: Path, source: str) -> None:
    """Refuse to resume over a pool that the data no longer gives; note when the run's fingerprint is of an
    older kind, which doesn't cover gold labels or consistency keys."""
    change = pool_change(run["pool_fingerprint"], claims)
    if change is not None:
        hint = ""
        if not _is_current(run["pool_fingerprint"]) and any(c.has_data_field("choice_2") for c in claims.values()):
            hint = (" If it is custom data with choice_2: this version shows choice_2 to the model and earlier ones "
                    "did not, so its prompts differ.")
        raise CheckpointError(f"--resume {out}: the data no longer gives the pool this run was labelling ({change}; "
                              f"was {source} changed?): resume with the original data, or start a new run.{hint}")
    if not _is_current(run["pool_fingerprint"]):
        print(f"note: {out} was started by an older icm, whose check of the data covers claims, groups and prompts "
              "but not gold labels or consistency keys: make sure those are as they were", file=sys.stderr)


def rng_to_json(rng: random.Random) -> list:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def rng_from_json(saved: Any) -> random.Random:
    rng = random.Random()
    rng.setstate((saved[0], tuple(saved[1]), saved[2]))
    return rng


def new_run_id() -> str:
    return uuid.uuid4().hex


def save_run(files: RunDirectory, settings: dict, fingerprint: str, run_id: str,
             data: Optional[dict] = None) -> dict[str, Any]:
    """Write the run's record (run.json) and return what it holds. ``data`` says which data the run read
    (data_provenance.data_record)."""
    run = {"format": FORMAT_VERSION, "run_id": run_id, "settings": settings, "pool_fingerprint": fingerprint,
           **({"data": data} if data is not None else {})}
    rewrite_run(files, run)
    return run


def rewrite_run(files: RunDirectory, run: dict[str, Any]) -> None:
    """Write ``run`` (a record save_run made, or load_run read) over the run's record."""
    files.write(files.run_file, json.dumps(run, indent=2))


def save_checkpoint(files: RunDirectory, run: dict, state: SearchState, rng: random.Random,
                    cost: Optional[dict] = None) -> None:
    """``cost``: the run's scoring totals so far (src/run_directory/cost_ledger.py), kept for the next resume."""
    files.write(files.checkpoint_file, json.dumps({
        "format": FORMAT_VERSION,
        "run_id": run.get("run_id"),
        "pool_fingerprint": run["pool_fingerprint"],
        "iteration": state.iteration,
        "flip_cnt": state.flip_cnt,
        "converged": state.converged,
        "metric": state.metric,
        "labels": {str(uid): claim.label for uid, claim in state.claims.items()},
        "rng": rng_to_json(rng),
        **({"cost": cost} if cost is not None else {}),
        # A bootstrap labeller's labellings so far and the cycle it stopped on (SearchState); ICM keeps neither.
        **({"seen": state.seen} if state.seen else {}),
        **({"cycle": state.cycle} if state.cycle is not None else {}),
    }))


def damaged(path: Path, what: str) -> CheckpointError:
    """The error for a run file that can't be read back as written: the file, what is wrong, and the fix."""
    return CheckpointError(f"{path} is damaged ({what}), so the run can't be resumed from it: restore the file, "
                           f"or {START_AGAIN}")


def _read(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(path, "not JSON") from None
    except RecursionError:
        raise damaged(path, "nested too deeply") from None
    if not isinstance(saved, dict):
        raise damaged(path, f"it holds {json.dumps(saved)[:40]}, not an object")
    if saved.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} has format {saved.get('format')!r}, which this version of icm (format "
                              f"{FORMAT_VERSION}) can't read: resume it with the icm version that wrote it, or {START_AGAIN}")
    return saved


def load_run(files: RunDirectory) -> dict[str, Any]:
    """The identity, settings and pool fingerprint of the run in ``files``."""
    path, out = files.run_file, files.path
    if not path.is_file():
        raise CheckpointError(f"--resume {out}: no {RUN_FILE} there, so no run to resume; start a new run with --output-dir")
    run = _read(path)
    if not isinstance(run.get("settings"), dict) or not isinstance(run.get("pool_fingerprint"), str):
        raise damaged(path, "no settings or pool fingerprint")
    if run["format"] >= 2 and not isinstance(run.get("run_id"), str):
        raise damaged(path, "no run id")
    return run


def load_checkpoint(files: RunDirectory, run: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The last saved search state of the run ``run``, or None if it stopped before its first checkpoint."""
    path = files.checkpoint_file
    if not path.is_file():
        return None
    saved = _read(path)
    if saved["format"] != run["format"]:
        raise CheckpointError(f"{path} (format {saved['format']}) does not belong to the run in {files.run_file} "
                              f"(format {run['format']}): restore this run's checkpoint, or {START_AGAIN}")
    if saved["format"] >= 2:
        if saved.get("run_id") != run["run_id"]:
            raise CheckpointError(f"{path} belongs to another run (run id {saved.get('run_id')!r}, this run's is "
                                  f"{run['run_id']!r}): restore this run's checkpoint, or {START_AGAIN}")
        if saved.get("pool_fingerprint") != run["pool_fingerprint"]:
            raise CheckpointError(f"{path} was saved over another pool than the run in {files.run_file}: "
                                  f"restore this run's checkpoint, or {START_AGAIN}")
    return saved


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def restore_state(saved: dict[str, Any], claims: Claims, path: Path,
                  flips_per_iteration: int = 1) -> tuple[SearchState, random.Random]:
    """The saved search state over the rebuilt pool (whose fingerprint the caller has checked).
    ``flips_per_iteration``: the most labels one iteration can change (ICM 1; a baseline's round, the pool)."""
    labels = saved.get("labels")
    if not isinstance(labels, dict):
        raise damaged(path, "no labels")
    if set(labels) != {str(uid) for uid in claims}:
        raise CheckpointError(f"{path}: its claims do not match the pool rebuilt from the data; restore this run's "
                              f"checkpoint and data, or {START_AGAIN}")
    bad = next((f"{uid}: {value!r}" for uid, value in labels.items() if value not in (0, 1, None) or isinstance(value, (bool, float))), None)
    if bad is not None:
        raise damaged(path, f"label of claim {bad}; a label is 0, 1 or null")
    iteration, flip_cnt, metric = saved.get("iteration"), saved.get("flip_cnt"), saved.get("metric")
    if not _count(iteration):
        raise damaged(path, f"iteration {iteration!r} is not a whole number")
    if not _count(flip_cnt) or flip_cnt > iteration * flips_per_iteration:
        what = "the iteration" if flips_per_iteration == 1 else f"{flips_per_iteration} per iteration"
        raise damaged(path, f"flip_cnt {flip_cnt!r} is not a whole number up to {what}")
    converged = saved.get("converged", False)  # written since the bootstrap labellers; ICM's is always false
    if not isinstance(converged, bool):
        raise damaged(path, f"converged {converged!r} is not true or false")
    if not isinstance(metric, dict) or any(not _metric_value(f, metric.get(f)) for f in METRIC_FIELDS):
        raise damaged(path, f"the metric lacks one of {', '.join(METRIC_FIELDS)}")
    try:
        rng = rng_from_json(saved.get("rng"))
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        raise damaged(path, "the random generator's state can't be restored") from None
    seen, cycle = _labellings_seen(saved, len(claims), iteration, path)
    restored: dict[int, Claim] = {uid: claim.relabelled(labels[str(uid)]) for uid, claim in claims.items()}
    return SearchState(claims=restored, metric=metric, iteration=iteration, flip_cnt=flip_cnt, converged=converged,
                       seen=seen, cycle=cycle), rng


def _labellings_seen(saved: dict[str, Any], pool_size: int, iteration: int,
                     path: Path) -> tuple[list[dict[str, Any]], Optional[dict[str, int]]]:
    """A bootstrap labeller's labellings seen and the cycle it stopped on, checked; ([], None) when the checkpoint
    has none (ICM's, or one written before they were kept)."""
    seen, cycle = saved.get("seen", []), saved.get("cycle")
    if not isinstance(seen, list):
        raise damaged(path, "its labellings seen are not a list")
    for entry in seen:
        ok = (isinstance(entry, dict) and _count(entry.get("round")) and entry["round"] <= iteration
              and isinstance(entry.get("labels"), str) and len(entry["labels"]) == pool_size
              and set(entry["labels"]) <= set("01-") and isinstance(entry.get("metric"), dict)
              and all(_metric_value(f, entry["metric"].get(f)) for f in METRIC_FIELDS))
        if not ok:
            raise damaged(path, f"a labelling seen is {json.dumps(entry)[:60]}, not a round, labels and metric")
    if cycle is not None and not (isinstance(cycle, dict) and _count(cycle.get("length")) and cycle["length"] >= 1
                                  and _count(cycle.get("kept_round")) and cycle["kept_round"] <= iteration):
        raise damaged(path, f"cycle {json.dumps(cycle)[:60]} is not a length and a kept round")
    return seen, cycle


def trim_log(files: RunDirectory, iterations: int) -> None:
    """Keep exactly the log lines of the iterations the checkpoint covers, and drop later ones (the resumed
    run redoes those iterations). A last line cut short by a crash is dropped too. Anything else wrong (a
    damaged line with lines after it, a missing or repeated iteration) stops the resume: the log is the
    run's record, and is never cut silently."""
    path = files.log_file
    if not path.exists():
        if iterations:
            print(f"note: {path} is missing; the resumed log starts at iteration {iterations}", file=sys.stderr)
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    kept: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            at = record["iter"] if isinstance(record, dict) else None
        except (json.JSONDecodeError, KeyError, RecursionError):
            at = None
        if not _count(at):
            if number == len(lines):
                break  # a line a crash cut short
            raise CheckpointError(f"{path} line {number} is damaged and {len(lines) - number} line(s) follow it: "
                                  f"repair or delete that line, or move {path.name} aside to resume without it")
        if at >= iterations:
            continue
        if at != len(kept):
            raise CheckpointError(f"{path} line {number} is iteration {at} where iteration {len(kept)} belongs: the log "
                                  f"is not this checkpoint's. Move {path.name} aside to resume without it")
        kept.append(line + "\n")
    if len(kept) < iterations:
        raise CheckpointError(f"{path} holds {len(kept)} of the {iterations} iterations the checkpoint has done: "
                              f"restore the log, or move {path.name} aside to resume without it")
    dropped = len(lines) - len(kept)
    if dropped:
        print(f"note: {path}: dropped {dropped} line(s) past the checkpoint (iteration {iterations}); "
              "those iterations are redone", file=sys.stderr)
    files.write(path, "".join(kept))
