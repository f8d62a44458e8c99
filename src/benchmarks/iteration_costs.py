"""Per-iteration cost of a search: counters read after every iteration, their differences, and their spread.

The benchmark (scripts/benchmark_icm.py) and the steady-state cost model (steady_state.py) read the same
counters after the first scoring (the seed labels' pool score and its repair) and after each iteration, and
summarise the differences with ``spread``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class CostCounters:
    """Running totals at one moment, or (a difference of two) what one iteration cost."""
    requests: int = 0
    computed_tokens: int = 0  # prompt tokens the engine computed (not served from its prefix cache)
    prompt_tokens: int = 0  # prompt tokens the engine was given
    pool_scores: int = 0  # pool scores computed (memo hits excluded)
    seconds: float = 0.0  # wall time

    def __sub__(self, other: "CostCounters") -> "CostCounters":
        return CostCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


FIGURES = tuple(f.name for f in fields(CostCounters))


@dataclass(frozen=True)
class Spread:
    """Median and spread of one figure over the iterations: p25-p75 is the interquartile range (numpy's
    linear interpolation between order statistics), min-max the full range; total is the sum."""
    median: float
    p25: float
    p75: float
    min: float
    max: float
    total: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        """The spread of ``values``; raises ValueError when there are none."""
        if not len(values):
            raise ValueError("no iterations to summarise")
        a = np.asarray(values, dtype=float)
        p25, median, p75 = np.percentile(a, [25, 50, 75])
        return cls(float(median), float(p25), float(p75), float(a.min()), float(a.max()), float(a.sum()))


def iteration_costs(readings: Sequence[CostCounters]) -> list[CostCounters]:
    """What each iteration cost, from the counters read before the first iteration and after each one."""
    return [after - before for before, after in zip(readings, readings[1:])]


def per_iteration(costs: Sequence[CostCounters]) -> dict[str, dict[str, float]]:
    """For each figure (requests, computed_tokens, prompt_tokens, pool_scores, seconds), its Spread as a dict;
    {} when no iteration ran."""
    if not costs:
        return {}
    return {name: asdict(Spread.of([getattr(c, name) for c in costs])) for name in FIGURES}


def split_by_proposal(costs: Sequence[CostCounters], proposed: Sequence[bool]) -> dict[str, object]:
    """The iterations' costs apart by whether the iteration proposed a flip (its prediction disagreed with the
    claim's label). A steady-state iteration that proposes nothing costs ours nothing (its prediction is read
    from the memoised pool score), so a run's cost per iteration is the proposal rate times the cost per
    proposal, and the rate is the model's, not the engine's.

    Returns {"iterations", "proposals", "proposal_rate" (None for no iterations), "per_proposal",
    "per_other_iteration"} with ``per_iteration``'s spreads ({} when none). Raises ValueError when the two
    sequences differ in length."""
    if len(costs) != len(proposed):
        raise ValueError(f"{len(costs)} iteration costs but {len(proposed)} proposal flags")
    flips = [c for c, p in zip(costs, proposed) if p]
    others = [c for c, p in zip(costs, proposed) if not p]
    return {"iterations": len(costs), "proposals": len(flips),
            "proposal_rate": len(flips) / len(costs) if costs else None,
            "per_proposal": per_iteration(flips), "per_other_iteration": per_iteration(others)}
