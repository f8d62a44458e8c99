"""The size of a set of prompts' token prefix trie: the fewest tokens an engine with a perfect prefix cache
must compute to read them all."""
from __future__ import annotations

from typing import Sequence


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def trie_size(token_lists: Sequence[Sequence[int]]) -> int:
    """Tokens in the trie of the sequences.

    In sorted order each sequence adds exactly its tokens past the prefix it shares with the one before it
    (sorting visits the trie depth first).
    """
    ordered = sorted(tuple(tokens) for tokens in token_lists)
    total, previous = 0, ()
    for tokens in ordered:
        total += len(tokens) - common_prefix_length(tokens, previous)
        previous = tokens
    return total
