"""The claim: one statement of the pool that the search labels, as one typed, immutable record.

A pool is a ``dict[int, Claim]`` keyed by uid (the claim's position in the pool). Relabelling makes a new
Claim (``claim.relabelled(label)``), so a labelling the search tries never changes the one it came from.

The names on disk are older than this type and are file formats, so they stay: ``prompt`` (here ``text``),
``consistency_id`` (``group_id``), ``gold_label`` in labels.jsonl and ``vanilla_label`` (the reference code's
name) in run.json's pool fingerprint; ``initial_random_label`` (``seed``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional, Union

GroupId = Union[int, str]
# The data's text fields that labels.jsonl carries beside the claim, in the order it writes them.
DATA_TEXT_FIELDS = ("question", "choice", "choice_2", "answer")


@dataclass(frozen=True)
class Claim:
    uid: int  # position in the pool; the key of every per-claim map (scores, labels)
    text: str  # what the model is shown, ending in "I think this claim is" (labels.jsonl: "prompt")
    group_id: GroupId  # consistency group: the claims the consistency rules compare (consistency_id)
    consistency_key: Optional[str]  # claims of a group with equal keys agree; None: no rule applies
    gold_label: Optional[int]  # the dataset's label (1, 0, None if unknown); reporting only, never the search
    label: Optional[int] = None  # the search's label: 1, 0, or None while unlabelled
    seed: bool = False  # one of the claims the search started with a random label
    record: Optional[int] = None  # position in its source file, which identifies it across shards
    # The record's question/choice/choice_2/answer, those it has, as (field, value) in DATA_TEXT_FIELDS order.
    data_text: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any], uid: int, label: Optional[int] = None, seed: bool = False) -> "Claim":
        """A testbed record (src/data/testbeds.py: ``prompt``, ``consistency_id``, ``consistency_key``, gold
        ``label``, ``record``) as the pool's claim ``uid``, with the search's ``label``."""
        return cls(
            uid=uid, text=record["prompt"], group_id=record["consistency_id"],
            consistency_key=record.get("consistency_key"), gold_label=record.get("label"), label=label, seed=seed,
            record=record.get("record"),
            data_text=tuple((name, record[name]) for name in DATA_TEXT_FIELDS if name in record),
        )

    @property
    def is_labelled(self) -> bool:
        return self.label is not None

    def relabelled(self, label: Optional[int]) -> "Claim":
        return replace(self, label=label)

    def has_data_field(self, name: str) -> bool:
        return any(field == name for field, _ in self.data_text)


Claims = Mapping[int, Claim]


def labelled_claims(claims: Claims) -> list[Claim]:
    """The labelled claims in uid order: the demonstrations of a pool score, the positions its prompt layouts
    refer to, and what the metric and the consistency rules look at."""
    return [claims[uid] for uid in sorted(claims) if claims[uid].label is not None]


def share_of_true(labels: Iterable[Any]) -> Optional[float]:
    """The share of the given labels that are True (1 or True), None ones left out, in [0, 1]; None when every
    label is None. One definition for the search's log, labels.jsonl's readers and the sweep's columns."""
    given = [bool(label) for label in labels if label is not None]
    return sum(given) / len(given) if given else None


def share_true(claims: Claims) -> Optional[float]:
    """The share of the labelled claims labelled True, in [0, 1]; None when none is labelled. A labelling that
    drifts towards one label shows here first (log.jsonl's ``share_true``)."""
    return share_of_true(c.label for c in labelled_claims(claims))


def _as_bool(label: Optional[int]) -> Optional[bool]:
    return None if label is None else bool(label)


def label_row(claim: Claim, score: Optional[float], label_mass: Optional[float]) -> dict[str, Any]:
    """The claim's row of labels.jsonl, its keys in the file's order (src/run_directory/run_outputs.py)."""
    row: dict[str, Any] = {"uid": claim.uid, "record": claim.record, "consistency_id": claim.group_id}
    row.update(claim.data_text)
    row.update(
        prompt=claim.text, label=_as_bool(claim.label), gold_label=_as_bool(claim.gold_label), score=score,
        label_mass=label_mass, labelled_by_search=claim.label is not None, initial_random_label=claim.seed,
    )
    return row


def claim_from_label_row(row: Mapping[str, Any]) -> Claim:
    """A labels.jsonl row read back as a Claim. The file holds no consistency key, so that is None."""
    def as_int(value: Any) -> Optional[int]:
        return None if value is None else int(value)

    return Claim(
        uid=row["uid"], text=row["prompt"], group_id=row["consistency_id"], consistency_key=None,
        gold_label=as_int(row.get("gold_label")), label=as_int(row.get("label")),
        seed=bool(row.get("initial_random_label", row.get("seed", False))), record=row.get("record"),
        data_text=tuple((name, row[name]) for name in DATA_TEXT_FIELDS if name in row),
    )
