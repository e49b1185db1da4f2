"""The work the speculative decoder runs, one target forward at a time: jobs.

A `PrefillJob` brings a sequence's cache to some ids (and can read an end-of-turn score on
the way); a `ReplyJob` prefills its prompt, then drafts k tokens, verifies them in one
forward of `[last_token] + draft` and emits the accepted span. Where the drafter branches and
the target verifies trees, the k tokens may be a tree (`decode.tree`; the controller's
`tree_shape(k)` says how it grows): the job's `parents` then go with its feed, and only the
accepted path's cache rows are kept. A driver — the decoder alone
(`SpeculativeDecoder.run`) or the batched `decode.scheduler.StepScheduler` — asks a job what
to feed, runs the forward and hands the job its rows. `GenerationSettings` and
`DecodeStats` are what a reply is given and what it measures.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from decode.controller import Controller, StepStats
from decode.drafters import Draft, Drafter, can_branch, observe
from decode.spans import Span, StableDetokenizer
from decode.target import Forward, Target
from decode.tree import TreeAccepted, TreeShape, greedy_accept_tree, is_chain, sample_accept_tree
from decode.verify import Accepted, greedy_accept, probs_from_logits, sample_accept


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
    tree_steps: int = 0  # steps that verified a draft tree
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
    tree_ranks: list[int] = field(default_factory=list)  # trees: levels whose accepted child was the r-th (0: none)

    def record(self, draft_len: int, accepted_len: int, levels: int | None = None) -> None:
        """Count one verify step of `draft_len` tokens: position (a tree's level) j is verified iff all
        before it were accepted; a tree says how many levels along its accepted path had children."""
        self.drafted += draft_len
        self.accepted += accepted_len
        self.draft_lens.append(draft_len)
        for j in range(min(accepted_len + 1, draft_len) if levels is None else levels):
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
        self.tree_steps += other.tree_steps
        self.tokens += other.tokens
        self.draft_s += other.draft_s
        self.verify_s += other.verify_s
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.draft_lens.extend(other.draft_lens)
        for j, (tried, acc) in enumerate(zip(other.tried_at, other.accepted_at)):
            self._count(j, tried, acc)
        for rank, n in enumerate(other.tree_ranks):
            self.count_rank(rank, n)

    def count_rank(self, rank: int, n: int = 1) -> None:
        """A tree level (a node with children on the accepted path) accepted its rank-th child (0: none)."""
        while len(self.tree_ranks) <= rank:
            self.tree_ranks.append(0)
        self.tree_ranks[rank] += n

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


class Sequence(Protocol):
    """What a job reads and moves on the sequence it works on (`SpeculativeDecoder` is one)."""

    target: Target
    tokenizer: object
    drafter: Drafter
    controller: Controller
    generator: torch.Generator

    @property
    def hidden(self) -> torch.Tensor | None:
        """The target's hidden state at the last cached position."""
        ...

    def plan_prefill(
        self, want: list[int], drafter: Drafter | None = None, refeed_from: int | None = None
    ) -> list[int]: ...

    def took_prefill(
        self, tokens: list[int], out: Forward, drafter: Drafter | None = None, keep_logits: bool = False
    ) -> None: ...

    def took_step(self, cached: list[int], hidden: torch.Tensor, rows: list[int] | None = None) -> None: ...

    def forget_logits(self) -> None: ...

    def primed_for(self, prompt_ids: list[int]) -> torch.Tensor | None: ...


class Job(Protocol):
    """Work on one sequence, one target forward at a time."""

    done: bool
    prefilling: bool  # it is still bringing the cache to its prompt (its feeds are prefill chunks)
    last_only: bool  # the next feed needs the logits of its last position only (a prefill chunk)
    parents: list[int] | None  # the last feed is a draft tree after its first token (None: a chain)

    def feed(self, k: int | None = None, max_tokens: int | None = None) -> list[int]:
        """Tokens for the next forward ([] when it has finished without one); k overrides the controller."""
        ...

    def take(self, out: Forward, seconds: float, shared: bool = False) -> None:
        """The forward's rows for this job's feed; `shared`: other sequences were in the same forward."""
        ...

    def drain(self) -> list[Span]: ...

    def stop_if_cancelled(self) -> bool:
        """End the job now if its owner cancelled it (its last span queued); True if it ended."""
        ...


class PrefillJob:
    """Bring a sequence's cache to `ids` (in chunks of at most `max_tokens`); with `token_ids`,
    also p = P(next token in token_ids | ids[:score_at + 1]), by default after all of `ids`.

    A `score_at` inside `ids` reads p from that row of the same forward: a prompt that goes on
    past the scored words (the reply's, after its end-of-turn score) costs no second prefill.
    """

    parents = None  # prefill chunks are chains

    def __init__(
        self,
        dec: Sequence,
        ids: list[int],
        drafter: Drafter | None = None,
        token_ids: list[int] | None = None,
        score_at: int | None = None,
        keep_logits: bool = False,
    ) -> None:
        """`keep_logits`: the decoder keeps the last row's logits, so a reply to exactly `ids`
        takes its first token from them instead of a forward (`ReplyJob`)."""
        self.dec, self.drafter, self.token_ids, self.keep_logits = dec, drafter, token_ids, keep_logits
        self.score_at = len(ids) - 1 if score_at is None else score_at
        if token_ids is not None and not 0 <= self.score_at < len(ids):
            raise ValueError(f"score_at {score_at} is outside the {len(ids)} ids")
        refeed = self.score_at if token_ids is not None else len(ids) - 1 if keep_logits and ids else None
        self.pending = dec.plan_prefill(ids, drafter, refeed_from=refeed)
        self.done = not self.pending
        self.prob = self.seconds = 0.0
        self._start = len(ids) - len(self.pending)  # the position of pending[0]
        self._fed: list[int] = []

    @property
    def prefilling(self) -> bool:
        return not self.done

    @property
    def last_only(self) -> bool:
        """Only the last row's logits are needed, unless the scored row is in this feed."""
        return self.token_ids is None or not self._start <= self.score_at < self._start + len(self._fed)

    def feed(self, k: int | None = None, max_tokens: int | None = None) -> list[int]:
        self._fed = self.pending[:max_tokens] if max_tokens else list(self.pending)
        return self._fed

    def take(self, out: Forward, seconds: float, shared: bool = False) -> None:
        if not self.last_only:
            logits = out.logits[self.score_at - self._start]
            self.prob = float(torch.softmax(logits.float(), dim=-1)[list(self.token_ids)].sum())
        self.dec.took_prefill(
            self._fed, out, self.drafter, keep_logits=self.keep_logits and len(self._fed) == len(self.pending)
        )
        del self.pending[: len(self._fed)]
        self._start += len(self._fed)
        self.seconds += seconds
        self.done = not self.pending

    def drain(self) -> list[Span]:
        return []

    def stop_if_cancelled(self) -> bool:
        return False  # a score or a cache warm-up is cheap and has no owner to cancel it


class ReplyJob:
    """One reply: prefill the prompt (chunked when a scheduler asks), then draft, verify, accept.

    Each step forwards `[last_token] + draft` (k + 1 tokens; a tree when the controller's shape
    branches and the drafter and target can); after a partial acceptance the cache is rolled back
    to the accepted length (a tree's accepted path moved into place first). A prompt whose prefill kept its logits (the
    end-of-turn score's, `PrefillJob(keep_logits=True)`) is primed: its first token is chosen
    from them (greedy, or sampled as a k = 0 step would), so the first step already verifies a
    draft of the second — one target forward less before the first words.
    """

    def __init__(
        self,
        dec: Sequence,
        prompt_ids: list[int],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        drafter: Drafter | None = None,
        controller: Controller | None = None,
    ) -> None:
        self.dec, self.settings, self.cancel = dec, settings, cancel
        self.drafter = drafter or dec.drafter
        self.controller = controller or dec.controller
        self.stats = DecodeStats()
        self._primed = dec.primed_for(prompt_ids)
        self.prefill = None if self._primed is not None else PrefillJob(dec, prompt_ids[:-1], self.drafter)
        self.ids = list(prompt_ids)
        self.detok = StableDetokenizer(dec.tokenizer)
        self.room = dec.target.max_len
        self.done = False
        self._out: list[Span] = []
        self._draft: Draft | None = None
        self._tokens: list[int] = []
        self._draft_s = 0.0
        self.trees = can_branch(self.drafter, dec.target)
        self.parents: list[int] | None = None

    @property
    def prefilling(self) -> bool:
        return self.prefill is not None and not self.prefill.done

    @property
    def last_only(self) -> bool:
        return self.prefilling

    def stop_if_cancelled(self) -> bool:
        if self.done or self.cancel is None or not self.cancel.is_set():
            return False
        self.stats.cancelled = self.done = True
        self._out.append(Span((), self.detok.flush(), 0, 0, time.perf_counter(), final=True))
        return True

    def feed(self, k: int | None = None, max_tokens: int | None = None) -> list[int]:
        if self.stop_if_cancelled():
            return []
        if self.prefilling:
            return self.prefill.feed(max_tokens=max_tokens)
        if self._primed is not None:
            self._take_primed(self._primed)
            self._primed = None
            if self.done:
                return []
        budget = self.settings.max_new_tokens - self.stats.tokens  # a path of budget - 1 drafts at most
        k = self.controller.next_k() if k is None else k
        k = max(0, min(k, self.room - len(self.ids) - 1))  # the cache holds every node fed
        t = time.perf_counter()
        shape = self.controller.tree_shape(k) if self.trees and k > 1 else None
        self.parents = None
        if shape is not None and shape.branch > 1 and budget > 1:
            shape = TreeShape(min(shape.depth, budget - 1), shape.branch)
            self._draft = self._as_chain(self.drafter.propose_tree(self.ids, k, shape, self.dec.hidden))
            self.parents = self._draft.parents
        else:
            k = max(0, min(k, budget - 1))
            self._draft = self.drafter.propose(self.ids, k, self.dec.hidden) if k else None
        self._tokens = self._draft.tokens[:k] if self._draft else []
        self._draft_s = time.perf_counter() - t
        return [self.ids[-1]] + self._tokens

    @staticmethod
    def _as_chain(draft: Draft) -> Draft:
        """A tree that grew as one chain is verified as a chain (the rows of its laws are a chain's)."""
        if draft.parents is None or not is_chain(draft.parents):
            return draft
        n = len(draft.tokens)
        return Draft(draft.tokens, None if draft.probs is None else draft.probs[:n])

    def _take_primed(self, logits: torch.Tensor) -> None:
        """The first token from the primed logits; the cache holds the prompt, `ids` gains it."""
        self.dec.forget_logits()  # used: the next forward extends the cache
        self._emit(self._verify([], None, logits[None]).tokens, 0, 0)  # what a k = 0 step does with them

    def _verify(self, tokens: list[int], draft: Draft | None, logits: torch.Tensor) -> Accepted:
        """Greedy or rejection-sampled acceptance of `tokens` against the target's `logits` [k + 1, V]."""
        s = self.settings
        if s.temperature > 0:
            q = draft.probs[: len(tokens)] if draft and draft.probs is not None else None
            return sample_accept(tokens, q, probs_from_logits(logits, s.temperature, s.top_p), self.dec.generator)
        return greedy_accept(tokens, logits)

    def _verify_tree(self, logits: torch.Tensor) -> TreeAccepted:
        """Greedy or recursive-rejection acceptance of the draft tree against the target's `logits` [n + 1, V]."""
        s, draft = self.settings, self._draft
        if s.temperature > 0:
            probs = probs_from_logits(logits, s.temperature, s.top_p)
            return sample_accept_tree(draft.tokens, draft.parents, draft.probs, probs, self.dec.generator)
        return greedy_accept_tree(draft.tokens, draft.parents, logits)

    def take(self, out: Forward, seconds: float, shared: bool = False) -> None:
        if self.prefilling:
            self.prefill.take(out, seconds)
            self.stats.prefill_s += seconds
            return
        if self.parents is not None:
            self._take_tree(out, seconds, shared)
            return
        tokens, ids = self._tokens, self.ids
        accepted = self._verify(tokens, self._draft, out.logits)
        n = accepted.accepted_len
        self.dec.took_step(ids + tokens[:n], out.hidden[n])
        observe(self.drafter, len(ids) - 1, out.hidden[: n + 1])
        self.controller.update(StepStats(len(tokens), n, self._draft_s, None if shared else seconds))
        st = self.stats
        st.steps += 1
        st.record(len(tokens), n)
        st.draft_s += self._draft_s
        st.verify_s += seconds
        self._emit(accepted.tokens, len(tokens), n)

    def _take_tree(self, out: Forward, seconds: float, shared: bool) -> None:
        """A tree's verify: keep the accepted path's cache rows, learn, emit."""
        tokens, ids = self._tokens, self.ids
        accepted = self._verify_tree(out.logits)
        n, rows = accepted.accepted_len, accepted.rows
        self.dec.took_step(ids + accepted.tokens[:n], out.hidden[rows[-1]], rows)
        observe(self.drafter, len(ids) - 1, out.hidden[rows])
        self.controller.update(
            StepStats(
                len(tokens),
                n,
                self._draft_s,
                None if shared else seconds,
                tuple(accepted.tried),
                tuple(accepted.accepted_rank),
            )
        )
        st = self.stats
        st.steps += 1
        st.tree_steps += 1
        st.record(len(tokens), n, len(accepted.tried))
        for rank in accepted.accepted_rank:
            st.count_rank(rank)
        st.draft_s += self._draft_s
        st.verify_s += seconds
        self._emit(accepted.tokens, len(tokens), n)

    def _emit(self, tokens: list[int], draft_len: int, accepted_len: int) -> None:
        """Append accepted tokens up to the budget and the first EOS; queue their span."""
        settings = self.settings
        budget = settings.max_new_tokens - self.stats.tokens
        emitted = tokens[:budget]
        final = len(emitted) == budget
        for i, tok in enumerate(emitted):
            if tok in settings.eos_ids:
                emitted, final = emitted[:i], True
                break
        self.ids.extend(emitted)
        self.stats.tokens += len(emitted)
        text = self.detok.push(emitted)
        if final:
            text += self.detok.flush()
            self.done = True
        self._out.append(Span(tuple(emitted), text, draft_len, accepted_len, time.perf_counter(), final=final))

    def drain(self) -> list[Span]:
        out, self._out = self._out, []
        return out
