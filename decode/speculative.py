"""The speculative decoder: draft k, verify in one target forward, emit the accepted span.

In: prompt token ids, a `Target`, a `Drafter`, a `Controller`. Out: an iterator of
`Span`s, one per step, each carrying the accepted draft prefix plus the target's own next
token. Each step forwards `[last_token] + draft` (k + 1 tokens) through the target, so
k = 0 is exactly plain decoding; after a partial acceptance the cache is rolled back to
the accepted length. Cost per step: k drafter tokens + one target forward of k + 1.

The KV cache of the previous call is reused for the common prefix of the new prompt, so
a conversation (or a growing partial transcript) is only prefilled where it changed.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from decode.controller import Controller, StepStats
from decode.drafters import Drafter, common_prefix_len, observe
from decode.spans import Span, StableDetokenizer
from decode.target import Target
from decode.verify import greedy_accept, probs_from_logits, sample_accept


@dataclass(frozen=True)
class GenerationSettings:
    """How one reply is generated."""

    max_new_tokens: int = 96
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()


@dataclass
class DecodeStats:
    """Totals for one reply."""

    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0  # time spent in the drafter
    verify_s: float = 0.0  # time spent in target forwards
    cancelled: bool = False
    draft_lens: list[int] = field(default_factory=list)
    tried_at: list[int] = field(default_factory=list)  # per draft position: times it was verified
    accepted_at: list[int] = field(default_factory=list)  # … and accepted

    def record(self, draft_len: int, accepted_len: int) -> None:
        """Count one verify step (position j is verified iff all before it were accepted)."""
        self.drafted += draft_len
        self.accepted += accepted_len
        self.draft_lens.append(draft_len)
        for j in range(min(accepted_len + 1, draft_len)):
            self._count(j, 1, int(j < accepted_len))

    def _count(self, position: int, tried: int, accepted: int) -> None:
        if position == len(self.tried_at):
            self.tried_at.append(0)
            self.accepted_at.append(0)
        self.tried_at[position] += tried
        self.accepted_at[position] += accepted

    def add(self, other: DecodeStats) -> None:
        """Accumulate another reply's totals (benchmarks sum over prompts)."""
        self.steps += other.steps
        self.tokens += other.tokens
        self.draft_s += other.draft_s
        self.verify_s += other.verify_s
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.draft_lens.extend(other.draft_lens)
        for j, (tried, acc) in enumerate(zip(other.tried_at, other.accepted_at)):
            self._count(j, tried, acc)

    @property
    def acceptance(self) -> float:
        """Accepted draft tokens / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_draft_len(self) -> float:
        """Mean k proposed per step."""
        return sum(self.draft_lens) / len(self.draft_lens) if self.draft_lens else 0.0

    @property
    def mean_accepted(self) -> float:
        """Mean tokens emitted per target forward."""
        return self.tokens / self.steps if self.steps else 0.0


class SpeculativeDecoder:
    """Owns the target's KV cache across calls; one reply at a time."""

    def __init__(self, target: Target, tokenizer, drafter: Drafter, controller: Controller,
                 seed: int = 0) -> None:
        self.target, self.tokenizer = target, tokenizer
        self.drafter, self.controller = drafter, controller
        self.generator = torch.Generator().manual_seed(seed)
        self._cached: list[int] = []  # tokens whose KV is in the target cache
        self._hidden: torch.Tensor | None = None  # hidden state at the last cached position
        self.stats = DecodeStats()

    def prefill(self, ids: list[int], drafter: Drafter | None = None) -> None:
        """Bring the target cache to `ids[:-1]`, reusing the common prefix with what is cached."""
        want = ids[:-1]
        keep = common_prefix_len(self._cached, want)
        if keep == len(want) == len(self._cached):
            return
        if keep == len(want) and keep > 0:
            keep -= 1  # re-feed one token to recover its hidden state
        self.target.rollback(keep)
        self._cached = want[:keep]
        self._hidden = None
        if keep < len(want):
            out = self.target.forward(want[keep:])
            self._cached = list(want)
            self._hidden = out.hidden[-1]
            observe(drafter or self.drafter, keep, out.hidden)

    def next_token_prob(self, ids: list[int], token_ids: list[int]) -> float:
        """P(next token in token_ids | ids) under the target: prefill `ids` (reusing the cache),
        then one softmax, summed over `token_ids`.

        The cache then holds all of `ids`, so a prompt that extends them (the reply to the same
        transcript) is only prefilled past them: the score costs one softmax over a prefill
        the reply needs anyway.
        """
        self.prefill(ids)  # cache = ids[:-1]
        out = self.target.forward([ids[-1]])
        self._cached = list(ids)
        self._hidden = out.hidden[-1]
        observe(self.drafter, len(ids) - 1, out.hidden)
        return float(torch.softmax(out.logits[-1].float(), dim=-1)[list(token_ids)].sum())

    def generate(self, prompt_ids: list[int], settings: GenerationSettings,
                 cancel: threading.Event | None = None, drafter: Drafter | None = None,
                 controller: Controller | None = None) -> Iterator[Span]:
        """Yield spans of the reply to `prompt_ids` until EOS, max tokens or `cancel`.

        `drafter`/`controller` override the decoder's own for this call (benchmarks, baselines).
        """
        drafter = drafter or self.drafter
        controller = controller or self.controller
        self.stats = stats = DecodeStats()
        t0 = time.perf_counter()
        self.prefill(prompt_ids, drafter)
        stats.prefill_s = time.perf_counter() - t0
        ids = list(prompt_ids)
        detok = StableDetokenizer(self.tokenizer)
        room = getattr(self.target, "max_len", 1 << 30)
        while True:
            if cancel is not None and cancel.is_set():
                stats.cancelled = True
                yield Span((), detok.flush(), 0, 0, time.perf_counter(), final=True)
                return
            budget = settings.max_new_tokens - stats.tokens
            k = max(0, min(controller.next_k(), budget - 1, room - len(ids) - 1))
            t_draft = time.perf_counter()
            draft = drafter.propose(ids, k, self._hidden) if k else None
            tokens = draft.tokens[:k] if draft else []
            t_verify = time.perf_counter()
            out = self.target.forward([ids[-1]] + tokens)
            if settings.temperature > 0:
                p = probs_from_logits(out.logits, settings.temperature, settings.top_p)
                q = draft.probs[:len(tokens)] if draft and draft.probs is not None else None
                accepted = sample_accept(tokens, q, p, self.generator)
            else:
                accepted = greedy_accept(tokens, out.logits)
            t_done = time.perf_counter()
            n = accepted.accepted_len
            self.target.rollback(len(ids) + n)
            self._cached = ids + tokens[:n]
            self._hidden = out.hidden[n]
            observe(drafter, len(ids) - 1, out.hidden[:n + 1])
            controller.update(StepStats(len(tokens), n, t_verify - t_draft, t_done - t_verify))
            emitted = accepted.tokens[:budget]
            final = len(emitted) == budget
            for i, tok in enumerate(emitted):
                if tok in settings.eos_ids:
                    emitted, final = emitted[:i], True
                    break
            ids.extend(emitted)
            stats.steps += 1
            stats.tokens += len(emitted)
            stats.record(len(tokens), n)
            stats.draft_s += t_verify - t_draft
            stats.verify_s += t_done - t_verify
            text = detok.push(emitted)
            if final:
                text += detok.flush()
            yield Span(tuple(emitted), text, len(tokens), n, time.perf_counter(), final=final)
            if final:
                return


def calibrate_verify_cost(target: Target, ks: list[int], reps: int = 3,
                          context: int = 64) -> dict[int, float]:
    """Measured seconds of one target forward of k + 1 tokens after `context` tokens (median)."""
    saved = target.length
    base = max(saved, min(context, getattr(target, "max_len", 1 << 30) - max(ks) - 2))
    if base > saved:
        target.forward([0] * (base - saved))
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
