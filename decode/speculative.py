"""The speculative decoder: draft k, verify in one target forward, emit the accepted span.

In: prompt token ids, a `Target`, a `Drafter`, a `Controller`. Out: an iterator of
`Span`s, one per step, each carrying the accepted draft prefix plus the target's own next
token. Each step forwards `[last_token] + draft` (k + 1 tokens) through the target, so
k = 0 is exactly plain decoding; after a partial acceptance the cache is rolled back to
the accepted length. Cost per step: k drafter tokens + one target forward of k + 1. The
work itself (a prefill, a reply) is a job: `decode.jobs`.

The KV cache of the previous call is reused for the common prefix of the new prompt, so
a conversation (or a growing partial transcript) is only prefilled where it changed.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator

import torch

from decode.controller import Controller
from decode.drafters import Drafter, common_prefix_len, observe, share_context
from decode.jobs import DecodeStats, GenerationSettings, Job, PrefillJob, ReplyJob
from decode.spans import Span
from decode.target import Forward, Target


class SpeculativeDecoder:
    """One sequence's state over a target (or one slot of it): its cached tokens, hidden state, drafter.

    Work on it is a job (`ReplyJob`, `PrefillJob`): the job says what to feed, a driver runs the
    target forward, the job takes the output. `generate`, `prefill` and `next_token_prob` drive
    one job alone; `decode.scheduler.StepScheduler` drives the jobs of many slots in one forward.
    """

    def __init__(self, target: Target, tokenizer, drafter: Drafter, controller: Controller, seed: int = 0) -> None:
        self.target, self.tokenizer = target, tokenizer
        self.drafter, self.controller = drafter, controller
        self.generator = torch.Generator().manual_seed(seed)
        self._cached: list[int] = []  # tokens whose KV is in the target cache
        self._hidden: torch.Tensor | None = None  # hidden state at the last cached position
        self._next_logits: torch.Tensor | None = None  # the target's logits there, when a prefill kept them
        self.stats = DecodeStats()

    @property
    def cached(self) -> list[int]:
        """The tokens whose KV the target holds (a scheduler picks the slot sharing most of a prompt)."""
        return self._cached

    def plan_prefill(
        self, want: list[int], drafter: Drafter | None = None, refeed_from: int | None = None
    ) -> list[int]:
        """Roll the cache back to its common prefix with `want`; return the tokens still to feed.

        `refeed_from`: tokens of `want` from this position on are fed again even if cached (their
        logits are wanted).
        """
        keep = common_prefix_len(self._cached, want)
        if refeed_from is not None:
            keep = min(keep, refeed_from)
        elif keep == len(want) == len(self._cached):
            return []
        elif keep == len(want) and keep > 0:
            keep -= 1  # re-feed one token to recover its hidden state
        if keep < len(self._cached):
            self.target.rollback(keep)
            del self._cached[keep:]
            self._hidden = self._next_logits = None
        return list(want[keep:])

    def took_prefill(
        self, tokens: list[int], out: Forward, drafter: Drafter | None = None, keep_logits: bool = False
    ) -> None:
        """The target now caches `tokens` after the cached ones; `out` is its forward over them.
        `keep_logits`: remember its last row's logits (what follows the cached tokens)."""
        observe(drafter or self.drafter, len(self._cached), out.hidden)
        self._cached.extend(tokens)
        self._hidden = out.hidden[-1]
        self._next_logits = out.logits[-1] if keep_logits else None

    @property
    def hidden(self) -> torch.Tensor | None:
        """The target's hidden state at the last cached position (what an MTP drafter reads)."""
        return self._hidden

    def took_step(self, cached: list[int], hidden: torch.Tensor, rows: list[int] | None = None) -> None:
        """A verify step ended: the cache is rolled back to `cached` (prompt + accepted tokens),
        whose last position's hidden state is `hidden`; `rows`: the step fed a tree, whose accepted
        path (these rows of the feed) moves into place first."""
        if rows is not None:
            self.target.keep_rows(len(self._cached), rows)
        self.target.rollback(len(cached))
        self._cached, self._hidden, self._next_logits = cached, hidden, None

    def forget_logits(self) -> None:
        """The kept logits were used (a primed first token); the next forward extends the cache."""
        self._next_logits = None

    def adopt_prefix(self, other: SpeculativeDecoder, n: int) -> bool:
        """Hold `other`'s first `n` cached tokens (their KV copied, the drafter's context too), as if
        this decoder had prefilled them; with all of `other`'s tokens, its last hidden state and kept
        logits too. False (nothing changed) where the targets cannot share a cache.

        The KV is `other`'s own, computed in other step widths than a prefill here would use: the
        same (tiny) difference as reusing this slot's cache across turns.
        """
        copy = getattr(self.target, "copy_prefix_from", None)
        if copy is None or not 0 < n <= len(other._cached) or not copy(other.target, n):
            return False
        share_context(self.drafter, other.drafter, n)
        self._cached = other._cached[:n]
        whole = n == len(other._cached)
        self._hidden = other._hidden if whole else None
        self._next_logits = other._next_logits if whole else None
        return True

    def forget(self) -> None:
        """Drop the whole cached context (the target's cache is reset by the caller)."""
        self._cached, self._hidden, self._next_logits = [], None, None

    def primed_for(self, prompt_ids: list[int]) -> torch.Tensor | None:
        """The logits after `prompt_ids` if the cache holds exactly them and a prefill kept its logits."""
        return self._next_logits if self._next_logits is not None and self._cached == list(prompt_ids) else None

    def run(self, job: Job) -> Iterator[Span]:
        """Drive one job alone: feed, forward, take, until it is done; yield its spans as they come."""
        while not job.done:
            feed = job.feed()
            if feed:
                t = time.perf_counter()
                out = self.target.forward(feed) if job.parents is None else self.target.forward(feed, job.parents)
                job.take(out, time.perf_counter() - t)
            yield from job.drain()

    def prefill(self, ids: list[int], drafter: Drafter | None = None) -> None:
        """Bring the target cache to `ids[:-1]`, reusing the common prefix with what is cached."""
        for _ in self.run(PrefillJob(self, ids[:-1], drafter=drafter)):
            pass

    def next_token_prob(self, ids: list[int], token_ids: list[int]) -> float:
        """P(next token in token_ids | ids) under the target: prefill `ids` (reusing the cache),
        then one softmax, summed over `token_ids`.

        The cache then holds all of `ids`, so a prompt that extends them (the reply to the same
        transcript) is only prefilled past them: the score costs one softmax over a prefill
        the reply needs anyway.
        """
        job = PrefillJob(self, ids, token_ids=token_ids)
        for _ in self.run(job):
            pass
        return job.prob

    def generate(
        self,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        drafter: Drafter | None = None,
        controller: Controller | None = None,
    ) -> Iterator[Span]:
        """Yield spans of the reply to `prompt_ids` until EOS, max tokens or `cancel`.

        `drafter`/`controller` override the decoder's own for this call (benchmarks, baselines).
        """
        job = ReplyJob(self, prompt_ids, settings, cancel, drafter, controller)
        self.stats = job.stats
        return self.run(job)


def calibrate_verify_cost(target: Target, ks: list[int], reps: int = 3, context: int = 64) -> dict[int, float]:
    """Measured seconds of one target forward of k + 1 tokens after `context` tokens (median)."""
    saved = target.length
    base = max(saved, min(context, target.max_len - max(ks) - 2))
    if base > saved:
        target.forward([0] * (base - saved))
    for k in ks:  # untimed first pass: a cold width (allocator, kernel choice) is not its cost
        target.forward([0] * (k + 1))
        target.rollback(base)
    costs = {}
    for k in ks:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            target.forward([0] * (k + 1))
            times.append(time.perf_counter() - t)
            target.rollback(base)
        costs[k] = sorted(times)[len(times) // 2]
    target.rollback(saved)
    return costs
