"""An oracle drafter with acceptance set by hand: benchmarks at real model sizes without real weights.

In: the target's greedy continuations (prompt + reply, from a plain greedy run), the wanted
acceptance per draft position a_1..a_n, the vocabulary size and a seed. Out: drafts whose
i-th token is the true next token with probability a_i and a wrong one otherwise.

The rule, per proposal at context `ids` (a prefix of one of the references, `ref`):
for draft position i = 1..k, with p = len(ids),
    draft_i = ref[p + i - 1]                        with probability a_i  (a_i = a_n for i > n)
    draft_i = any token but ref[p + i - 1]          otherwise (uniform over the other V - 1).
Draws are independent per position, so given that positions 1..i-1 were accepted, position
i is accepted with probability a_i — the conditional acceptance a benchmark reports — and
E[accepted | k] = sum_{i<=k} prod_{j<=i} a_j. Greedy verification keeps the decoder
lossless whatever the oracle proposes. A context that is no reference's prefix (the decoder
left the greedy path: bf16 rounding) gets no draft, and a draft stops where the reference
ends. Costs microseconds; no probabilities (one-hot), so greedy decoding only.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from decode.drafters import Draft


def acceptance_at(accept: Sequence[float], position: int) -> float:
    """a_i for draft position i = 1, 2, … from the given a_1..a_n (the last value repeats past n)."""
    return accept[min(position, len(accept)) - 1]


class OracleDrafter:
    """Proposes the target's known greedy continuation, right at position i with probability a_i."""

    name = "oracle"

    def __init__(
        self, references: Sequence[Sequence[int]], accept: Sequence[float], vocab_size: int, seed: int = 0
    ) -> None:
        if not accept or any(not 0.0 <= a <= 1.0 for a in accept):
            raise ValueError(f"oracle acceptance must be probabilities in [0, 1], got {list(accept)}")
        if vocab_size < 2:
            raise ValueError("the oracle needs a vocabulary of at least 2 tokens to propose a wrong one")
        self.references = [list(r) for r in references]
        self.accept = list(accept)
        self.vocab_size = vocab_size
        self.seed = seed
        self.rng = random.Random(seed)
        self.off_reference = 0  # proposals asked at a context no reference starts with
        self._last = 0  # index of the reference that matched last (the usual next match)

    def reset(self) -> None:
        """Start the draws over from the seed."""
        self.rng = random.Random(self.seed)
        self.off_reference = 0

    def acceptance_at(self, position: int) -> float:
        """a_i for draft position i = 1, 2, …"""
        return acceptance_at(self.accept, position)

    def _reference(self, ids: list[int]) -> list[int] | None:
        order = [self._last] + [i for i in range(len(self.references)) if i != self._last]
        for i in order:
            ref = self.references[i]
            if len(ref) > len(ids) and ref[: len(ids)] == ids:
                self._last = i
                return ref
        return None

    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        """Up to k tokens after `ids` by the rule in the module docstring."""
        if k <= 0:
            return Draft([])
        ref = self._reference(ids)
        if ref is None:
            self.off_reference += 1
            return Draft([])
        tokens = []
        for i, true in enumerate(ref[len(ids) : len(ids) + k], start=1):
            if self.rng.random() < self.acceptance_at(i):
                tokens.append(true)
            else:  # uniform over the V - 1 tokens that are not the true one
                tokens.append((true + 1 + self.rng.randrange(self.vocab_size - 1)) % self.vocab_size)
        return Draft(tokens)
