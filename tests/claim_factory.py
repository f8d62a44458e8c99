"""Claims for tests, built in one line: ``claim(uid, label, group=..., key=..., gold=...)``."""
from __future__ import annotations

from typing import Any, Optional

from src.data.claims import Claim


def claim(uid: int, label: Optional[int] = None, group: Any = 0, key: Optional[str] = None, gold: Optional[int] = None,
          text: Optional[str] = None, record: Optional[int] = None, seed: bool = False) -> Claim:
    return Claim(uid=uid, text=text if text is not None else f"Question: q{group}\nClaim: c{uid}\nI think this claim is",
                 group_id=group, consistency_key=key, gold_label=gold, label=label, seed=seed, record=record)


def by_uid(*claims: Claim) -> dict[int, Claim]:
    return {c.uid: c for c in claims}
