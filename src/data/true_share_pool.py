"""A pool with a chosen share of gold-True claims (``--true-share``), the imbalance stress of Canavan et al. (2026).

The gold labels decide only which claims enter the pool; what the search sees of a claim is unchanged. The pool
holds exactly ``true_quota(share, batch_size)`` gold-True claims and the rest gold-False, and keeps consistency
groups whole as far as those two quotas allow:

1. The groups are visited in an order drawn from ``rng``. A group enters whole when its gold-True and its
   gold-False claims both fit in what is left of their quotas.
2. While a quota has room, the groups left out are visited again in the same order, and each gives the claims of
   the classes that still have room, in file order.

So a pool is whole groups, plus parts of groups where the share demands them. On alpaca and the preference
testbeds every group is one True and one False claim, so any share but 0.5 needs parts: a claim without its
partner takes part in no consistency rule. Claims with no gold label never enter (they count towards neither
quota). The pool lists each group's claims together, groups in the order they were visited.
"""
from __future__ import annotations

import random
from decimal import ROUND_HALF_UP, Decimal

from src.data.record_files import DataError, Record
from src.data.testbeds import Testbed, check_group_sizes, group_claims


def true_quota(share: float, batch_size: int) -> int:
    """How many gold-True claims a pool of ``batch_size`` with ``share`` True holds: share × batch_size rounded
    half up, on the decimal the share is written as (0.35 × 10 is 4, not the 3 that binary 0.35 would give)."""
    return int((Decimal(repr(share)) * batch_size).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def sample_pool_with_true_share(claims: list[Record], testbed: Testbed, batch_size: int, share: float,
                                rng: random.Random, source: str) -> list[Record]:
    """``batch_size`` claims of ``claims`` (normalised records, ``label`` 0/1/None), exactly
    ``true_quota(share, batch_size)`` of them gold-True and the others gold-False, drawn with ``rng``.

    Raises DataError naming --true-share when ``claims`` has no gold label at all, or too few claims of a class
    for the quota, and the pool-size errors sample_pool gives (--batch_size not a multiple of a fixed group
    size)."""
    groups = list(group_claims(claims).values())
    check_group_sizes(groups, testbed, source)
    if testbed.group_size is not None and batch_size % testbed.group_size:
        raise DataError(f"--batch_size {batch_size} must be a multiple of {testbed.name}'s group size {testbed.group_size}")
    wanted = {1: true_quota(share, batch_size)}
    wanted[0] = batch_size - wanted[1]
    have = {cls: sum(claim["label"] == cls for claim in claims) for cls in (0, 1)}
    if not have[0] and not have[1]:
        raise DataError(f"--true-share {share} draws the pool by gold label, and {source} has none (no 'label' field or "
                        "column, or only nulls): give the data its gold labels (--columns label=COLUMN names the "
                        "column), or drop --true-share")
    for cls, name in ((1, "True"), (0, "False")):
        if wanted[cls] > have[cls]:
            other = "lower" if cls == 1 else "raise"
            raise DataError(f"--true-share {share} asks for {wanted[cls]} gold-{name} claims in a pool of --batch_size "
                            f"{batch_size}, and {source} has only {have[cls]}: {other} --true-share, or lower --batch_size")

    room = dict(wanted)
    taken: dict[int, list[Record]] = {}
    order = rng.sample(range(len(groups)), len(groups))
    for index in order:
        counts = {cls: sum(claim["label"] == cls for claim in groups[index]) for cls in (0, 1)}
        if sum(counts.values()) and all(counts[cls] <= room[cls] for cls in (0, 1)):
            taken[index] = [claim for claim in groups[index] if claim["label"] is not None]
            for cls in (0, 1):
                room[cls] -= counts[cls]
    for index in order:
        if not room[0] and not room[1]:
            break
        if index in taken:
            continue
        part = []
        for claim in groups[index]:
            if claim["label"] is not None and room[claim["label"]]:
                part.append(claim)
                room[claim["label"]] -= 1
        if part:
            taken[index] = part
    return [claim for index in order if index in taken for claim in taken[index]]


def unlabelled_count(claims: list[Record]) -> int:
    """How many of ``claims`` have no gold label (a --true-share pool never holds them)."""
    return sum(claim["label"] is None for claim in claims)
