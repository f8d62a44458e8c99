"""The search's full state on disk after every iteration, so a killed run resumes exactly where it was.

``run.json`` is written once, before any model call: the settings the run was started with and a
fingerprint of its pool. ``checkpoint.json`` is rewritten after the seeds are scored and after every
iteration: the labels, the current metric, the iteration and flip counters and the RNG state. Both are
written atomically (a temporary file, fsynced, renamed over the old one), so a crash leaves the old or the
new, never half. A run killed before its first checkpoint resumes from its seeds.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, Optional

from src.experiments.run_outputs import write_atomically
from src.experiments.search import Claims, SearchState

CHECKPOINT_FILE = "checkpoint.json"
RUN_FILE = "run.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def pool_fingerprint(claims: Claims) -> str:
    """Identifies the pool: which claims, in which order, with which prompts."""
    digest = hashlib.sha256()
    for uid in sorted(claims):
        claim = claims[uid]
        digest.update(json.dumps([uid, claim["consistency_id"], claim["prompt"]]).encode())
    return digest.hexdigest()


def rng_to_json(rng: random.Random) -> list:
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def rng_from_json(saved: list) -> random.Random:
    rng = random.Random()
    rng.setstate((saved[0], tuple(saved[1]), saved[2]))
    return rng


def save_run(out: Path, settings: dict, fingerprint: str) -> None:
    write_atomically(out / RUN_FILE, crash_point="checkpoint-write", text=json.dumps({"format": FORMAT_VERSION, "settings": settings, "pool_fingerprint": fingerprint}, indent=2))


def save_checkpoint(out: Path, state: SearchState, rng: random.Random) -> None:
    write_atomically(out / CHECKPOINT_FILE, crash_point="checkpoint-write", text=json.dumps({
        "format": FORMAT_VERSION,
        "iteration": state.iteration,
        "flip_cnt": state.flip_cnt,
        "metric": state.metric,
        "labels": {str(uid): claim["label"] for uid, claim in state.claims.items()},
        "rng": rng_to_json(rng),
    }))


def _read(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is damaged (not JSON); it can't be resumed. Start a new run") from None
    if saved.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by another version of icm (format {saved.get('format')!r})")
    return saved


def load_run(out: Path) -> dict[str, Any]:
    """The settings and pool fingerprint of the run in ``out``."""
    for leftover in out.glob(".*.tmp"):  # a write that a crash cut short; the real file is intact
        leftover.unlink(missing_ok=True)
    path = out / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume {out}: no {RUN_FILE} there, so no run to resume; start a new run with --output-dir")
    return _read(path)


def load_checkpoint(out: Path) -> Optional[dict[str, Any]]:
    """The last saved search state, or None if the run stopped before its first checkpoint."""
    path = out / CHECKPOINT_FILE
    return _read(path) if path.is_file() else None


def restore_state(saved: dict[str, Any], claims: Claims) -> tuple[SearchState, random.Random]:
    """The saved search state over the rebuilt pool (whose fingerprint the caller has checked)."""
    labels = saved["labels"]
    if set(labels) != {str(uid) for uid in claims}:
        raise CheckpointError("the checkpoint's claims do not match the pool rebuilt from the data")
    restored = {uid: {**claim, "label": labels[str(uid)]} for uid, claim in claims.items()}
    state = SearchState(claims=restored, metric=saved["metric"], iteration=saved["iteration"], flip_cnt=saved["flip_cnt"])
    return state, rng_from_json(saved["rng"])


def trim_log(path: Path, iterations: int) -> None:
    """Keep the log lines of iterations the checkpoint covers; drop any later or half-written line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record.get("iter", iterations) >= iterations:
            break
        kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")
