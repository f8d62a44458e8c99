"""Few-shot judge prompts: demonstrations (claim + label word) followed by the claim to judge.

Label styles:
- ``space-in-label`` (default): "... I think this claim is" + " True". BPE models predict " True" as one
  token, so the label's probability sits on one token.
- ``reference``: the reference's "... I think this claim is " + "True", whose trailing space makes BPE
  models predict a bare continuation (SmolLM2 puts most mass on digits).

Prompt layouts (the order of the demonstrations in each leave-one-out prompt):
- ``reference``: every prompt lists the other claims in pool order, as the reference code does. The
  prompts' shared prefixes (their token trie) hold about N²L/2 tokens for N claims of L tokens.
- ``tree``: divide and conquer along consistency-group boundaries. Prompts for the first half of the
  groups start with all demonstrations of the second half and the other way round, recursively. Each
  prompt still holds exactly the other N−1 demonstrations, but the trie shrinks to about N·L·log₂N. The
  model sees another order, so scores move a little. It is the default layout (run_config.PromptConfig);
  --paper-mode and ``--prompt-layout reference`` use the reference's.
- ``tree-volatility`` (an experiment, off by default and under --paper-mode): the tree, with the claims of each
  chunk it lays out (the other half, quarter, ... of the pool) ordered by volatility, most volatile last, so a
  flip of an unsettled claim invalidates the least cached work. A claim's volatility is how often its label
  changed between consecutive pool scores so far (the pool scorer counts it), bucketed by powers of two
  (0, 1, 2–3, 4–7, ...) so the order moves rarely; ties keep pool order. Without a history it is the tree.
"""
from __future__ import annotations

from typing import Literal, Mapping, Optional, Sequence

from src.data.claims import Claim

LabelStyle = Literal["space-in-label", "reference"]
PromptLayout = Literal["reference", "tree", "tree-volatility"]
PROMPT_LAYOUTS = ("reference", "tree", "tree-volatility")
# Label changes seen per claim uid (PoolScorer.label_changes): what the tree-volatility layout orders by.
Volatility = Mapping[int, int]
LABEL_WORDS = {1: "True", 0: "False"}
DEMO_SEPARATOR = "\n\n"


def query_text(claim_text: str, style: LabelStyle) -> str:
    """The part of a prompt that asks for a claim's label (``claim_text``: Claim.text, labels.jsonl's "prompt")."""
    return claim_text + (" " if style == "reference" else "")


def demonstration_text(claim_text: str, label: int, style: LabelStyle) -> str:
    space = "" if style == "reference" else " "
    return query_text(claim_text, style) + space + LABEL_WORDS[label] + DEMO_SEPARATOR


def demonstration(claim: Claim, style: LabelStyle) -> str:
    """A labelled claim as a demonstration. Raises KeyError for an unlabelled one."""
    return demonstration_text(claim.text, claim.label, style)  # type: ignore[arg-type]


def judge_prompt(claim: Claim, demonstrations: Sequence[Claim], style: LabelStyle) -> str:
    return "".join(demonstration(d, style) for d in demonstrations) + query_text(claim.text, style)


def reference_demo_orders(pool_size: int) -> list[list[int]]:
    """For each pool position, the positions of its demonstrations: all the others, in pool order."""
    return [[j for j in range(pool_size) if j != i] for i in range(pool_size)]


def volatility_rank(changes: int) -> int:
    """The bucket a claim's count of label changes falls in: 0, 1, 2–3, 4–7, ... -> 0, 1, 2, 3, ..."""
    return changes.bit_length()


def tree_demo_orders(pool: Sequence[Claim], volatility: Optional[Volatility] = None) -> list[list[int]]:
    """For each pool position, the positions of its demonstrations in the divide-and-conquer layout.

    The pool is cut into blocks at consistency-group boundaries (consecutive claims of one group form a
    block). Once a single block is left, its claims become the blocks, so groupmates are split last.
    ``volatility`` (label changes by uid; None: the plain tree) orders the claims of each chunk a prompt
    takes from the other side of a cut, least volatile first (see volatility_rank; ties in pool order). Every
    prompt of a side takes the same chunk, so the prompts still share it.
    """
    blocks: list[list[int]] = []
    for i, claim in enumerate(pool):
        if blocks and pool[blocks[-1][-1]].group_id == claim.group_id:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    orders: list[list[int]] = [[] for _ in pool]

    def chunk(side: list[list[int]]) -> list[int]:
        positions = [i for block in side for i in block]
        if volatility is None:
            return positions
        return sorted(positions, key=lambda i: (volatility_rank(volatility.get(pool[i].uid, 0)), i))

    def place(blocks: list[list[int]], prefix: list[int]) -> None:
        if len(blocks) == 1:
            if len(blocks[0]) == 1:
                orders[blocks[0][0]] = prefix
                return
            blocks = [[i] for i in blocks[0]]
        first, second = _halves(blocks)
        place(first, prefix + chunk(second))
        place(second, prefix + chunk(first))

    if pool:
        place(blocks, [])
    return orders


def _halves(blocks: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Split at the block boundary that comes closest to halving the claims (never leaving a side empty)."""
    total = sum(len(b) for b in blocks)
    best_cut, best_gap, running = 1, total, 0
    for cut in range(1, len(blocks)):
        running += len(blocks[cut - 1])
        gap = abs(total - 2 * running)
        if gap < best_gap:
            best_cut, best_gap = cut, gap
    return blocks[:best_cut], blocks[best_cut:]


def demo_orders(pool: Sequence[Claim], layout: PromptLayout, frame: Optional[Sequence[Claim]] = None,
                volatility: Optional[Volatility] = None) -> list[list[int]]:
    """For each pool position, the positions of its demonstrations.

    ``frame`` is the whole pool, labeled or not, that ``pool`` (its labeled claims) is part of. The layout is
    laid over the frame and then restricted to ``pool``, so it stays put while claims get labeled: a new
    label inserts one demonstration and leaves the prefixes before it as they were. ``volatility`` (label
    changes by uid) is read only by the tree-volatility layout; the others ignore it.
    """
    if frame is None:
        return _layout_orders(pool, layout, volatility)
    position = {claim.uid: i for i, claim in enumerate(pool)}
    in_pool = [position.get(claim.uid) for claim in frame]
    orders: list[list[int]] = [[] for _ in pool]
    for claim_at, order in zip(in_pool, _layout_orders(frame, layout, volatility)):
        if claim_at is not None:
            orders[claim_at] = [in_pool[j] for j in order if in_pool[j] is not None]  # type: ignore[misc]
    return orders


def _layout_orders(pool: Sequence[Claim], layout: PromptLayout, volatility: Optional[Volatility]) -> list[list[int]]:
    if layout == "reference":
        return reference_demo_orders(len(pool))
    if layout == "tree":
        return tree_demo_orders(pool)
    if layout == "tree-volatility":
        return tree_demo_orders(pool, volatility or {})
    raise ValueError(f"unknown prompt layout {layout!r}: use one of {', '.join(PROMPT_LAYOUTS)}")


def leave_one_out_prompts(
    pool: Sequence[Claim], style: LabelStyle, layout: PromptLayout, frame: Optional[Sequence[Claim]] = None,
    volatility: Optional[Volatility] = None,
) -> list[str]:
    """For each labeled claim (in pool order), the prompt that judges it from all the others."""
    return prompts_in_order(pool, style, demo_orders(pool, layout, frame, volatility))


def prompts_in_order(pool: Sequence[Claim], style: LabelStyle, orders: Sequence[Sequence[int]]) -> list[str]:
    """For each claim (in pool order), the prompt that judges it from the demonstrations ``orders`` gives it."""
    demos = [demonstration(c, style) for c in pool]
    return ["".join(demos[j] for j in order) + query_text(claim.text, style) for claim, order in zip(pool, orders)]


def send_order(orders: Sequence[Sequence[int]]) -> list[int]:
    """The order to hand a pool's prompts (with these demo_orders) to the engine: a depth-first walk of their
    prefix trie.

    Each prompt then follows the prompt it shares the most with, so an engine that keeps its last prompt
    (llama.cpp's slot, vLLM's recently used blocks) recomputes only what the trie adds. The walk visits
    children in descending demonstration order, which for the reference layout is plain pool order.
    The model sees the same prompts: only the engine's order changes.
    """
    return sorted(range(len(orders)), key=lambda i: (orders[i], i), reverse=True)


def full_demo_order(orders: Sequence[Sequence[int]]) -> list[int]:
    """The order of all the pool's demonstrations (given its demo_orders) in the prompt that judges a claim
    outside the pool.

    It extends the last prompt sent for the pool's score, so that prompt's whole prefix is reused. For
    the reference layout that is pool order, as in the reference code.
    """
    if not orders:
        return []
    last = send_order(orders)[-1]
    return list(orders[last]) + [last]
