"""Drafters: cheap proposers of the next k tokens.

In: the context token ids (prompt + reply so far; the last id is not yet in the target's
cache), k, and the target's hidden state at the last cached position. Out: a `Draft` of
up to k tokens and, for sampling, the drafter's probabilities for them. A drafter keeps
its own state in step with the decoder by comparing the context it is given with the one
it last saw (common prefix), so rejected drafts are rolled back implicitly.

- `NgramDrafter`: prompt lookup — the continuation of the latest earlier occurrence of the
  context's last n tokens. Costs microseconds; no probabilities (one-hot).
- `ModelDrafter`: any causal LM with the target's tokenizer, with its own KV cache.

A drafter that can branch also has `propose_tree(ids, nodes, shape, hidden)`: a `Draft` whose
`parents` make it a tree (`decode.tree`; `decode.mtp.MTPDrafter` has it). The others propose
chains, which are trees too.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from decode.target import Target
from decode.verify import probs_from_logits


class Draft(NamedTuple):
    """Proposed tokens, and the drafter's law at each verify row or None for a deterministic drafter.

    A chain: token i was drawn from probs[i] (rows [len(tokens), V]). A tree (`parents`, rows as in
    `decode.tree`: parents[i] is the row of token i's parent, 0 the last context token): the children
    of row r were drawn from probs[r] (rows [len(tokens) + 1, V]).
    """

    tokens: list[int]
    probs: torch.Tensor | None = None
    parents: list[int] | None = None  # None: a chain


def can_branch(drafter: Drafter, target: Target) -> bool:
    """The drafter proposes trees and the target verifies them in one forward."""
    return hasattr(drafter, "propose_tree") and getattr(target, "trees", False)


def pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[int, torch.Tensor | None]:
    """The argmax (temperature 0), or a sample and the distribution q it came from (rejection sampling needs q)."""
    if temperature <= 0:
        return int(logits.argmax()), None
    q = probs_from_logits(logits, temperature, top_p)
    return int(torch.multinomial(q, 1, generator=generator)), q


class Drafter(Protocol):
    """Proposes up to k next tokens for a context."""

    name: str

    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft: ...

    def reset(self) -> None: ...


def observe(drafter: Drafter, start: int, hidden: torch.Tensor) -> None:
    """Tell a drafter what the target's cache holds from position `start` on (its features there).

    Only drafters that read the target's context (`MTPDrafter` with `context`) have `observe`.
    """
    method = getattr(drafter, "observe", None)
    if method is not None:
        method(start, hidden)


def share_context(drafter: Drafter, source: Drafter, n: int) -> None:
    """Give `drafter` what `source` observed of the target's first `n` cached positions (after
    their KV was copied between slots); only drafters with `observe` keep any."""
    method = getattr(drafter, "copy_context", None)
    if method is not None:
        method(source, n)


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class NoDrafter:
    """Proposes nothing: plain decoding."""

    name = "none"

    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        return Draft([])

    def reset(self) -> None:
        pass


class NgramDrafter:
    """Prompt lookup: match the last n tokens (n from max_n down to min_n) earlier in the context."""

    name = "ngram"

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {min_n}, {max_n}")
        self.max_n, self.min_n = max_n, min_n

    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        if k <= 0:
            return Draft([])
        for n in range(min(self.max_n, len(ids) - 1), self.min_n - 1, -1):
            tail = ids[-n:]
            # latest earlier occurrence whose continuation exists
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start : start + n] == tail:
                    return Draft(ids[start + n : start + n + k])
        return Draft([])

    def reset(self) -> None:
        pass


class ModelDrafter:
    """A small causal LM sharing the target's tokenizer, drafting autoregressively."""

    name = "model"

    def __init__(
        self,
        target: Target,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        hf_model=None,
    ) -> None:
        self.model = target
        self.hf_model = hf_model  # the transformers model, for `generate(assistant_model=…)`
        self.temperature, self.top_p = temperature, top_p
        self.generator = generator
        self._cached: list[int] = []  # tokens whose KV sits in the draft model's cache

    def reset(self) -> None:
        self.model.reset()
        self._cached = []

    def _feed(self, tokens: list[int]) -> torch.Tensor:
        self._cached.extend(tokens)
        return self.model.forward(tokens).logits[-1]

    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        if k <= 0:
            return Draft([])
        keep = common_prefix_len(self._cached, ids[:-1])
        self.model.rollback(keep)
        del self._cached[keep:]
        logits = self._feed(ids[keep:])
        tokens, rows = [], []
        for j in range(k):
            token, q = pick(logits, self.temperature, self.top_p, self.generator)
            tokens.append(token)
            if q is not None:
                rows.append(q)
            if j < k - 1:
                logits = self._feed([token])
        return Draft(tokens, torch.stack(rows) if rows else None)
