"""A run's scoring cost over all its invocations: the first ICM.py process and every --resume after it.

Each process counts only what its own route did, so the totals so far are carried in the run's files: in
checkpoint.json (rewritten after every iteration) and in summary.json's cost block (written at the end of an
invocation, after its last checkpoint). A resume adds its own counts to the newer of the two: the one that has
seen more invocations, and summary.json on a tie. A process killed outright (SIGKILL, a crash) wrote no summary,
so what it did after its last checkpoint is not counted; on vLLM, whose token counts come from the server's
/metrics, the checkpoint's token counts are those of the last read, made at most every
ENGINE_STATS_REFRESH_SECONDS.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

from core.llm_api.llm import ModelAPI
from core.llm_api.base_llm import RouteStats
from src.pipeline.scoring_cost import CostCounts, Prices, cost_report
from src.run_directory.run_directory import RunDirectory

# How often, at most, a checkpoint asks a server route's /metrics for fresh token counts (one GET each time).
ENGINE_STATS_REFRESH_SECONDS = 60.0
CHECKPOINT_KEY = "cost"  # checkpoint.json's field for the totals so far


def _read_json(path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # statistics: a damaged record is no reason to stop a resume


def earlier_cost(files: RunDirectory) -> Optional[CostCounts]:
    """The totals of the run's earlier invocations as its files record them (see the module's docstring); None
    when neither checkpoint.json nor summary.json holds any (a run started by an icm that kept no totals, or one
    killed before its first checkpoint)."""
    checkpoint = _read_json(files.checkpoint_file) if files.checkpoint_file.is_file() else None
    summary = _read_json(files.summary_file) if files.summary_file.is_file() else None
    from_checkpoint = CostCounts.from_json(checkpoint.get(CHECKPOINT_KEY)) if isinstance(checkpoint, dict) else None
    cost = summary.get("cost") if isinstance(summary, dict) else None
    from_summary = CostCounts.from_json(cost.get("run")) if isinstance(cost, dict) else None
    # On a tie summary.json wins (max keeps the first of equals): it was written after the same invocation's last
    # checkpoint, so it also holds what came after it (the end's predictions).
    known = [counts for counts in (from_summary, from_checkpoint) if counts is not None]
    return max(known, key=lambda counts: counts.invocations) if known else None


class CostLedger:
    """This invocation's cost on top of the run's earlier invocations'."""

    def __init__(self, earlier: Optional[CostCounts], counted_from_start: bool, started: float, prices: Prices,
                 clock: Callable[[], float] = time.time) -> None:
        self.earlier = earlier or CostCounts()
        self.counted_from_start = counted_from_start
        self.started, self.prices, self.clock = started, prices, clock
        self._refreshed_at = started

    @classmethod
    def for_run(cls, files: RunDirectory, resumed: bool, started: float, prices: Prices) -> "CostLedger":
        """A new run counts from nothing; a resumed one from the totals its files hold."""
        earlier = earlier_cost(files) if resumed else None
        return cls(earlier, not resumed or earlier is not None, started, prices)

    def this_invocation(self, stats: RouteStats, route: str, wall_seconds: Optional[float] = None,
                        scorer: Optional[Any] = None) -> CostCounts:
        """This invocation's counts; ``scorer`` (the run's PoolScorer) adds its pool scores and predictions."""
        return CostCounts.from_route(stats, route, self.clock() - self.started if wall_seconds is None else wall_seconds,
                                     scorer)

    def for_checkpoint(self, model_api: ModelAPI, scorer: Optional[Any] = None) -> dict[str, Any]:
        """The totals so far, for checkpoint.json. A server route's token counts are read afresh at most every
        ENGINE_STATS_REFRESH_SECONDS (one /metrics request), so checkpoints add no request per iteration."""
        now = self.clock()
        if now - self._refreshed_at >= ENGINE_STATS_REFRESH_SECONDS:
            self._refreshed_at = now
            stats = model_api.refresh_stats()
        else:
            stats = model_api.stats
        return (self.earlier + self.this_invocation(stats, model_api.route_name, scorer=scorer)).to_json()

    def report(self, stats: RouteStats, route: str, wall_seconds: float, labelled: Optional[int],
               scorer: Optional[Any] = None) -> dict[str, Any]:
        """summary.json's cost block: the run's totals over every invocation (with ``scorer``'s pool scores and
        predictions), per labelled claim, and this invocation's own counts."""
        this = self.this_invocation(stats, route, wall_seconds, scorer)
        total = self.earlier + this
        report = cost_report(total, total_key="run", unit="labelled_claim", units=labelled, prices=self.prices, route=route)
        report.update({
            "this_invocation": this.to_json(),
            "counted_from_start": self.counted_from_start,
            "covers": (f"every invocation of the run ({total.invocations}: the first and each --resume)"
                       if self.counted_from_start else
                       f"only the run's last {total.invocations} invocation(s): an earlier one left no totals (an icm "
                       "that kept none, or a process killed before its first checkpoint)"),
        })
        return report
