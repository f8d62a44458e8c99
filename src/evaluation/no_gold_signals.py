"""Signals without gold: what a run's own files say about how far to trust its labels, read from run directories
(labels.jsonl, log.jsonl, summary.json) without a model and without the gold labels.

    run_signals(run_dir)          one run:  {"run", "labelled", "pool_size", "final_share_true", "share_true",
                                             "inconsistent_num", "energy", "stopped_early"}
    seed_signals([run_dir, ...])  several runs of one setting (seeds):  {"runs": [run_signals ...],
                                             "agreement": {"pairs": [...], "mean"}, "energy", "inconsistent_num",
                                             "share_true_drift"}
    label_agreement(a, b)         two runs' labels on the claims both labelled, up to the global flip

**Which claims are the same claim.** A claim is matched across runs by what the model judged: its
``consistency_id`` and its ``prompt`` (the claim's text as shown, without the demonstrations), plus, for a pool that
holds the same claim twice, which occurrence it is. ``record`` (a position in the data file) is not used: two runs
of one file agree on it, but so would two runs of different files, and a claim's text is what its label is about.
Runs of different label styles or prompt layouts still match, since ``prompt`` holds neither.

**Up to the global flip.** Two seeds may find the same partition of the pool with True and False swapped: mutual
predictability rewards labels that predict each other, which the swapped labelling nearly does too, and only the
model's leaning towards one label word and the asymmetric rules (two different answers can't both be True) tell
the two apart. So a pair's agreement is max(a, 1 − a) of its raw agreement
a, in [0.5, 1], with ``orientation`` "same" (a ≥ 0.5, a tie included) or "flipped". Runs that share no labelled
claim have agreement None, not 0.

Nothing here reads ``gold_label`` or ``train_accuracy``. A damaged file is refused as run_reading refuses it
(UserError naming the file and the fix).
"""
from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path
from statistics import mean
from typing import Any, Hashable, Optional, Sequence

from src.cli.cli_errors import UserError
from src.data.claims import share_of_true
from src.run_directory.run_directory import LABELS_FILE, RunDirectory
from src.run_directory.run_reading import label_row_problem, read_json_lines, rewrite_advice, run_summary

ClaimIdentity = tuple[Hashable, str, int]  # (consistency_id, prompt, occurrence of that pair in the pool)


def run_labels(run_dir: Path) -> dict[ClaimIdentity, Optional[bool]]:
    """The run's label of each claim of its pool (None: the search never labelled it), keyed by claim identity."""
    path = RunDirectory(run_dir).labels_file
    if not path.is_file():
        raise UserError(f"{run_dir} has no {LABELS_FILE}: it is not a run directory, or the run stopped before "
                        f"writing its labels; {rewrite_advice(run_dir)}")
    rows = read_json_lines(path, rewrite_advice(run_dir), check=label_row_problem)
    seen: Counter = Counter()
    labels: dict[ClaimIdentity, Optional[bool]] = {}
    for row in rows:
        claim = (row["consistency_id"], row["prompt"])
        labels[(*claim, seen[claim])] = row["label"]
        seen[claim] += 1
    return labels


def label_agreement(first: dict[ClaimIdentity, Optional[bool]],
                    second: dict[ClaimIdentity, Optional[bool]]) -> dict[str, Any]:
    """Agreement of two runs' labels (run_labels) on the claims both labelled, up to the global flip.

    Returns {"shared": claims labelled in both, "raw": share with the same label (None when shared is 0),
    "agreement": max(raw, 1 - raw) (None when shared is 0), "orientation": "same" | "flipped" | None}."""
    shared = [identity for identity, label in first.items()
              if label is not None and second.get(identity) is not None]
    if not shared:
        return {"shared": 0, "raw": None, "agreement": None, "orientation": None}
    raw = sum(first[identity] == second[identity] for identity in shared) / len(shared)
    return {"shared": len(shared), "raw": raw, "agreement": max(raw, 1 - raw),
            "orientation": "same" if raw >= 0.5 else "flipped"}


def share_true_drift(run_dir: Path) -> Optional[dict[str, Any]]:
    """The share of labelled claims labelled True over the iterations, from log.jsonl's "share_true".

    Returns {"first", "last", "drift" (last − first), "min", "max", "range" (max − min), "iterations" (lines with
    a share)}, shares in [0, 1]. None when the log is missing or empty, when a line lacks "share_true" (a log
    written before it existed: nothing is recomputed), or when no line has a share (nothing was labelled)."""
    path = RunDirectory(run_dir).log_file
    if not path.is_file():
        return None
    lines = read_json_lines(path, rewrite_advice(run_dir), cut_last_line_ok=True)
    if not lines or any("share_true" not in line for line in lines):
        return None
    shares = [line["share_true"] for line in lines if line["share_true"] is not None]
    if not shares:
        return None
    return {"first": shares[0], "last": shares[-1], "drift": shares[-1] - shares[0], "min": min(shares),
            "max": max(shares), "range": max(shares) - min(shares), "iterations": len(shares)}


def run_signals(run_dir: Path) -> dict[str, Any]:
    """One run's signals without gold.

    Returns {"run": the folder as text, "labelled": claims with a label, "pool_size": claims in the pool,
    "final_share_true": share of the labelled claims labelled True in labels.jsonl (None if none is),
    "share_true": share_true_drift(run_dir), "inconsistent_num": the consistency violations left (summary.json's
    final; None without it), "energy": the final energy (likewise), "stopped_early": summary.json's reason, or
    None}."""
    return _run_signals(run_dir, run_labels(run_dir))


def _run_signals(run_dir: Path, labels: dict[ClaimIdentity, Optional[bool]]) -> dict[str, Any]:
    given = [label for label in labels.values() if label is not None]
    summary = run_summary(run_dir) or {}
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    return {
        "run": str(run_dir),
        "labelled": len(given),
        "pool_size": len(labels),
        "final_share_true": share_of_true(given),
        "share_true": share_true_drift(run_dir),
        "inconsistent_num": final.get("inconsistent_num"),
        "energy": final.get("energy"),
        "stopped_early": summary.get("stopped_early"),
    }


def _spread(values: Sequence[Optional[float]]) -> Optional[dict[str, float]]:
    known = [value for value in values if value is not None]
    if not known:
        return None
    return {"mean": mean(known), "min": min(known), "max": max(known), "runs": len(known)}


def seed_signals(run_dirs: Sequence[Path]) -> dict[str, Any]:
    """The signals of several runs of one setting, usually its seeds (over one pool: ``--pool-seed``).

    Returns {"runs": [run_signals per run], "agreement": {"pairs": [{"runs": [dir, dir], **label_agreement}],
    "mean": mean agreement over the pairs that share claims (None if none does), "flipped": how many of those
    pairs agree flipped}, and the spread ({"mean", "min", "max", "runs"}, None when no run has the value) of
    "energy", "inconsistent_num" and "share_true_drift" (each run's share_true drift)}.
    Raises UserError for fewer than two runs."""
    if len(run_dirs) < 2:
        raise UserError("seed agreement compares runs: give two or more run directories")
    labels = [run_labels(run_dir) for run_dir in run_dirs]
    runs = [_run_signals(run_dir, claim_labels) for run_dir, claim_labels in zip(run_dirs, labels)]
    pairs = [{"runs": [str(run_dirs[i]), str(run_dirs[j])], **label_agreement(labels[i], labels[j])}
             for i, j in combinations(range(len(run_dirs)), 2)]
    compared = [pair for pair in pairs if pair["agreement"] is not None]
    return {
        "runs": runs,
        "agreement": {"pairs": pairs, "mean": mean(p["agreement"] for p in compared) if compared else None,
                      "flipped": sum(p["orientation"] == "flipped" for p in compared)},
        "energy": _spread([run["energy"] for run in runs]),
        "inconsistent_num": _spread([run["inconsistent_num"] for run in runs]),
        "share_true_drift": _spread([run["share_true"]["drift"] if run["share_true"] else None for run in runs]),
    }
