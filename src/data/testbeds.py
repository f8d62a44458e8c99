"""Testbeds: where each dataset's records come from, how a record becomes a claim, and its consistency key.

Every claim's prompt ends with the stem ``I think this claim is``; the label word follows as a separate
token (see prompts.py).
"""
from __future__ import annotations

import math
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

# DataError and read_json_records live in record_files; callers import them from here as well.
from src.data.record_files import DataError, Record, read_json_records, read_records

CLAIM_STEM = "I think this claim is"
TESTBEDS = ("truthfulQA", "gsm8k", "alpaca", "truthfulQA-preference", "custom", "demo")
DATA_RELEASE_HINT = (
    "get the paper's data release (linked from the README of github.com/Jiaxin-Wen/Unsupervised-Elicitation)"
)


# Half of a UTF-16 pair with no other half ("\ud800" in the JSON): Python reads it, but no file can hold it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Testbed:
    name: str
    file_stem: Optional[str]  # train_<stem>.json / test_<stem>.json; None for data we don't read from a dir
    group_size: Optional[int]  # claims per consistency group; None when groups vary (custom)
    required_fields: tuple[str, ...]
    render: Callable[[Record], str]
    # (record, use_gold) -> key; with use_gold False the key must not be derived from the gold label
    key: Callable[[Record, bool], Optional[str]]
    key_from_gold: bool = False  # with use_gold, the key is the gold label's (the reference's TruthfulQA and preferences)
    # The text fields the model is shown, which must hold text (GSM8K shows `cot` in place of `choice`).
    shown_fields: tuple[str, ...] = ("question", "choice")


def _claim_prompt(record: Record) -> str:
    return f"Question: {record['question']}\nClaim: {record['choice']}\n{CLAIM_STEM}"


def _alpaca_prompt(record: Record) -> str:
    return (
        f"Human: {record['question']}\nResponse 1: {record['choice'].replace(chr(10), '')}\n"
        f"Response 2: {record['choice_2'].replace(chr(10), '')}\n"
        f"Claim: Response 1 is more helpful and harmless than Response 2.\n{CLAIM_STEM}"
    )


def _preference_prompt(record: Record) -> str:
    return (
        f"Question: {record['question']}\nAnswer 1: {record['choice']}\nAnswer 2: {record['choice_2']}\n"
        f"Claim: Answer 1 is more truthful than Answer 2.\n{CLAIM_STEM}"
    )


def _custom_prompt(record: Record) -> str:
    if "choice_2" not in record:
        return _claim_prompt(record)
    # Two responses, as the preference testbeds show them, under a claim that names no quality.
    return (
        f"Question: {record['question']}\nAnswer 1: {record['choice']}\nAnswer 2: {record['choice_2']}\n"
        f"Claim: Answer 1 is better than Answer 2.\n{CLAIM_STEM}"
    )


def _gsm8k_key(record: Record, use_gold: bool) -> str:
    # One record of the release has an empty final answer (""); a table reader gives an empty cell as null.
    answer = record["answer"]
    return "" if answer is None or (isinstance(answer, float) and math.isnan(answer)) else str(answer)


def _comparative_key(record: Record, use_gold: bool) -> str:
    if use_gold:
        return "A>B" if record["label"] else "B>A"
    # The two claims of a group show the same responses in swapped order; the order tells them apart.
    return "A>B" if record["choice"] <= record["choice_2"] else "B>A"


def _truthfulqa_key(record: Record, use_gold: bool) -> Optional[str]:
    # The reference's key is the gold label itself, which leaks the gold partition into the consistency
    # term. Without gold nothing says which answers to a question agree, so no rule applies.
    return ("A" if record["label"] else "B") if use_gold else None


def _custom_key(record: Record, use_gold: bool) -> Optional[str]:
    key = record.get("consistency_key")
    return None if key is None else str(key)


PAIR_FIELDS = ("question", "choice", "choice_2")
TESTBED_SPECS: dict[str, Testbed] = {
    "truthfulQA": Testbed("truthfulQA", "truthfulqa", 4, ("question", "choice", "label"), _claim_prompt, _truthfulqa_key,
                          key_from_gold=True),
    "gsm8k": Testbed("gsm8k", "gsm8k", 4, ("question", "answer", "label"), _claim_prompt, _gsm8k_key),
    "alpaca": Testbed("alpaca", "alpaca", 2, ("question", "choice", "choice_2", "label"), _alpaca_prompt, _comparative_key,
                      key_from_gold=True, shown_fields=PAIR_FIELDS),
    "truthfulQA-preference": Testbed(
        "truthfulQA-preference", "truthfulqa_preference", 2, ("question", "choice", "choice_2", "label"),
        _preference_prompt, _comparative_key, key_from_gold=True, shown_fields=PAIR_FIELDS,
    ),
    "custom": Testbed("custom", None, None, ("question", "choice"), _custom_prompt, _custom_key, shown_fields=PAIR_FIELDS),
    "demo": Testbed("demo", None, 4, ("question", "choice", "label"), _claim_prompt, lambda r, g: str(r["consistency_key"])),
}


def demo_records() -> list[Record]:
    """A small arithmetic testbed written by the project, so the main command needs no download.

    Each group is one sum with four claims: two phrasings of the right total and two wrong totals.
    Claims with the same total must share a label; two different totals can't both be true.
    """
    order = random.Random(0)
    sums = [(7, 5), (3, 4), (9, 8), (6, 6), (12, 7), (15, 5), (8, 3), (20, 4),
            (11, 11), (14, 9), (5, 2), (13, 6), (4, 4), (18, 3), (10, 7), (16, 8)]
    records = []
    for group, (a, b) in enumerate(sums):
        total = a + b
        claims = [(f"The answer is {total}.", total, True), (f"{a} + {b} = {total}.", total, True),
                  (f"The answer is {total + 1}.", total + 1, False), (f"{a} + {b} = {total - 2}.", total - 2, False)]
        order.shuffle(claims)
        for text, value, gold in claims:
            records.append({"question": f"What is {a} + {b}?", "choice": text, "label": gold,
                            "consistency_id": group, "consistency_key": str(value)})
    return records


def data_file_for(testbed: Testbed, data_dir: Optional[Path]) -> tuple[Path, bool]:
    """The file a testbed reads from ``data_dir``, and whether it is a test split standing in for train."""
    if data_dir is None:
        raise DataError(f"--testbed {testbed.name} reads its data from --data-dir DIR: {DATA_RELEASE_HINT}")
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a directory: point it at the folder holding the ICM JSON files")
    train, test = data_dir / f"train_{testbed.file_stem}.json", data_dir / f"test_{testbed.file_stem}.json"
    if train.is_file():
        return train, False
    if test.is_file():
        return test, True
    raise DataError(f"{data_dir} has neither {train.name} nor {test.name} for --testbed {testbed.name}: {DATA_RELEASE_HINT}")


def normalise_label(value: Any, where: str) -> Optional[int]:
    """Gold labels come as true/false or 1/0 (GSM8K mixes both); anything else is an error."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and math.isnan(value):
        raise DataError(f"{where}: label is NaN, which is how an empty table cell reads: give true/false or 1/0, "
                        "or null where the gold label is unknown")
    raise DataError(f"{where}: label {value!r} must be true/false or 1/0")


TEXT_NEEDED = "every claim needs its text"
SECOND_RESPONSE = "a pair needs its second response (keep single claims in a file without choice_2)"


def text_problem(value: Any, needed: str = TEXT_NEEDED) -> Optional[str]:
    """What is wrong with ``value`` as a text the model is shown, to follow "field 'x' " in a message; None if
    nothing is. A boolean, an empty cell (a table reader gives null or NaN), a number that is not finite and
    blank text are refused; ``needed`` says why an empty one can't be."""
    if isinstance(value, bool):
        return f"is {str(value).lower()}, a boolean, not text"
    if value is None:
        return f"is empty (null, as an empty cell of a CSV or table reads): {needed}"
    if isinstance(value, float) and math.isnan(value):
        return f"is empty (NaN, as an empty cell of a CSV or table reads): {needed}"
    if isinstance(value, float) and math.isinf(value):
        return f"is {value}, not text"
    if isinstance(value, str) and not value.strip():
        return f"is empty: {needed}"
    if not isinstance(value, (str, int, float)):
        return "must be text"
    return None


def normalise_records(raw: list[Record], testbed: Testbed, source: str, use_gold_consistency: bool) -> list[Record]:
    """Checked claims with ``prompt``, gold ``label`` (0/1/None) and ``consistency_key``."""
    claims = []
    for position, record in enumerate(raw):
        where = f"{source}, record {position}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with fields {', '.join(testbed.required_fields)}")
        missing = [f for f in (*testbed.required_fields, "consistency_id") if f not in record]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        shown = [f for f in testbed.shown_fields if f in record]
        if testbed.name == "gsm8k":  # the claim is the solution in `cot`, else `choice`
            shown = ["question", *[f for f in ("cot", "choice") if f in record][:1]]
        for text_field in shown:
            problem = text_problem(record[text_field], SECOND_RESPONSE if text_field == "choice_2" else TEXT_NEEDED)
            if problem is not None:
                raise DataError(f"{where}: field {text_field!r} {problem}")
        for text_field in ("question", "choice", "choice_2", "answer", "cot"):
            # Fields the model isn't shown may be empty (a table has every column in every row); not objects.
            value = record.get(text_field)
            if value is not None and not isinstance(value, (str, int, float)):
                raise DataError(f"{where}: field {text_field!r} must be text")
        if testbed.name == "gsm8k" and isinstance(record["answer"], bool):
            raise DataError(f"{where}: field 'answer' is {str(record['answer']).lower()}, a boolean, not the final answer")
        try:
            broken = next((name for name, value in record.items() if _has_lone_surrogate(name) or _has_lone_surrogate(value)), None)
        except RecursionError:
            raise DataError(f"{where}: nested too deeply; a record is a flat object of text fields") from None
        if broken is not None:
            raise DataError(f"{where}: field {broken!r} holds half of a UTF-16 surrogate pair (an escape like \\ud800 "
                            "with no partner), which no output file can hold; fix the text")
        cid = record["consistency_id"]
        if not isinstance(cid, (int, str)) or isinstance(cid, bool):
            raise DataError(f"{where}: consistency_id {cid!r} must be an integer or a string")
        claim = dict(record)
        claim["record"] = position  # where it sits in its source file: identifies it across shards
        claim["label"] = normalise_label(record.get("label"), where)
        if testbed.key_from_gold and use_gold_consistency and claim["label"] is None:
            raise DataError(f"{where}: no gold label, but --testbed {testbed.name} derives its consistency key from it: "
                            "give the label, or pass --no-gold-consistency")
        if testbed.name == "gsm8k":
            if "cot" not in record and "choice" not in record:
                raise DataError(f"{where}: a GSM8K record needs the solution in 'cot' (or 'choice')")
            claim["choice"] = record.get("cot", record.get("choice"))
        claim["prompt"] = testbed.render(claim)
        claim["consistency_key"] = testbed.key(claim, use_gold_consistency)
        claims.append(claim)
    return claims


def group_claims(claims: list[Record]) -> "OrderedDict[Any, list[Record]]":
    groups: OrderedDict[Any, list[Record]] = OrderedDict()
    for claim in claims:
        groups.setdefault(claim["consistency_id"], []).append(claim)
    return groups


def sample_pool(
    claims: list[Record], testbed: Testbed, batch_size: int, rng: random.Random, source: str
) -> list[Record]:
    """``batch_size`` claims made of whole consistency groups, chosen at random.

    With fixed-size groups this draws the same groups as the reference for the same RNG state.
    """
    groups = list(group_claims(claims).values())
    check_group_sizes(groups, testbed, source)
    if testbed.group_size is not None:
        size = testbed.group_size
        if batch_size % size:
            raise DataError(f"--batch_size {batch_size} must be a multiple of {testbed.name}'s group size {size}")
        if batch_size > len(claims):
            raise DataError(f"--batch_size {batch_size} is larger than the {len(claims)} records in {source}")
        chosen = rng.sample(range(len(groups)), batch_size // size)
        return [claim for index in chosen for claim in groups[index]]
    if batch_size > len(claims):
        raise DataError(f"--batch_size {batch_size} is larger than the {len(claims)} records in {source}")
    pool: list[Record] = []
    for index in rng.sample(range(len(groups)), len(groups)):
        if len(pool) + len(groups[index]) <= batch_size:
            pool.extend(groups[index])
    if not pool:
        smallest = min(len(group) for group in groups)
        raise DataError(f"--batch_size {batch_size} holds no whole consistency group of {source} (the smallest has "
                        f"{smallest} records): raise --batch_size to at least {smallest}")
    return pool


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def check_group_sizes(groups: list[list[Record]], testbed: Testbed, source: str) -> None:
    if testbed.group_size is None:
        return
    for group in groups:
        if len(group) != testbed.group_size:
            raise DataError(
                f"{source}: consistency_id {group[0]['consistency_id']!r} has {len(group)} records; "
                f"--testbed {testbed.name} needs exactly {testbed.group_size} per group (use --testbed custom for uneven groups)"
            )


def shard_pool(claims: list[Record], testbed: Testbed, num_batches: int, batch_index: int, seed: int, source: str) -> list[Record]:
    """The ``batch_index``-th of ``num_batches`` disjoint shards of whole groups that together cover the data.

    The groups are shuffled by ``seed`` alone, so every job of a sharded run computes the same split.
    """
    if num_batches < 1 or not 0 <= batch_index < num_batches:
        raise DataError(f"--batch-index {batch_index} must be between 0 and --num-batches {num_batches} - 1")
    groups = list(group_claims(claims).values())
    check_group_sizes(groups, testbed, source)
    if num_batches > len(groups):
        raise DataError(f"--num-batches {num_batches} is more than the {len(groups)} consistency groups in {source}")
    order = list(range(len(groups)))
    random.Random(f"shards:{seed}").shuffle(order)
    # Cut the shuffled groups where the running claim count crosses each shard's share.
    shards: list[list[Record]] = [[] for _ in range(num_batches)]
    total, seen = len(claims), 0
    for index in order:
        shard = min(num_batches - 1, seen * num_batches // total)
        shards[shard].extend(groups[index])
        seen += len(groups[index])
    return shards[batch_index]


def load_testbed_claims(
    name: str, data_dir: Optional[Path], data_file: Optional[Path], use_gold_consistency: bool,
    columns: Optional[Mapping[str, str]] = None,
) -> tuple[list[Record], str, bool]:
    """(claims, source description, whether a test split stands in for train).

    ``data_file`` is in any format record_files.read_records reads; ``columns`` ({field: column}) renames its
    columns to the claim fields.
    """
    if name not in TESTBED_SPECS:
        raise DataError(f"--testbed {name!r} is unknown: choose one of {', '.join(TESTBEDS)}")
    testbed = TESTBED_SPECS[name]
    if name == "demo" and data_file is None:
        return normalise_records(demo_records(), testbed, "demo", use_gold_consistency), "built-in demo", False
    if data_file is not None:
        path, from_test = data_file, False
    elif name == "custom":
        raise DataError("--testbed custom needs --data FILE: records with question, choice and consistency_id "
                        "(optional: label, consistency_key, choice_2) as a JSON list, JSON Lines, CSV, Parquet or a "
                        "saved Hugging Face dataset")
    else:
        path, from_test = data_file_for(testbed, data_dir)
    records = read_records(path, columns) if data_file is not None else read_json_records(path)
    return normalise_records(records, testbed, str(path), use_gold_consistency), str(path), from_test
