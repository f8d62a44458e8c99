"""A model of vLLM's automatic prefix cache, to plan runs on GPUs these machines don't have.

vLLM stores the KV cache in blocks: 16 tokens by default on GPUs, 128 on CPUs (where the size must be a multiple
of 32). A full block is known by a hash of its tokens and of the
block before it, so a block is reused only when the whole prefix up to it matches. Cached blocks that no
running request holds are evicted least recently used first; a finished request's blocks are freed tail
first, so a prompt's last blocks go before its first ones.

The model runs prompts one after another, so a prompt can reuse everything an earlier one cached. vLLM
schedules a batch's prompts together, so this is the best case for prompts within one request.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

BLOCK_SIZE = 16  # vLLM's GPU default
CPU_BLOCK_SIZE = 128  # vLLM's CPU default


def block_hashes(tokens: Sequence[int], block_size: int = BLOCK_SIZE) -> list[int]:
    """The chained hash of each full block of the prompt."""
    hashes, parent = [], 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start:start + block_size])))
        hashes.append(parent)
    return hashes


@dataclass
class CacheCounters:
    queried_tokens: int = 0
    hit_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class BlockPrefixCache:
    def __init__(self, capacity_tokens: int, block_size: int = BLOCK_SIZE) -> None:
        self.block_size = block_size
        self.capacity_blocks = capacity_tokens // block_size
        self._blocks: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self.counters = CacheCounters()

    def run(self, tokens: Sequence[int]) -> int:
        """Process one prompt; return how many of its tokens came from the cache."""
        hashes = block_hashes(tokens, self.block_size)
        hit_blocks = 0
        for h in hashes:
            if h not in self._blocks:
                break
            hit_blocks += 1
        if hit_blocks * self.block_size == len(tokens):
            hit_blocks -= 1  # the last token is always computed: its logits are the answer
        if len(hashes) > self.capacity_blocks:
            raise ValueError(f"a prompt of {len(tokens)} tokens does not fit a cache of "
                             f"{self.capacity_blocks * self.block_size} tokens")
        # The prompt holds all its blocks while it runs, so only other blocks can be evicted for its new ones.
        for h in hashes:
            self._blocks.pop(h, None)
        while len(self._blocks) + len(hashes) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        for h in reversed(hashes):  # freed tail first: the first blocks are the most recently used
            self._blocks[h] = None
        hits = hit_blocks * self.block_size
        self.counters.queried_tokens += len(tokens)
        self.counters.hit_tokens += hits
        return hits
