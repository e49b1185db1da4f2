"""The step scheduler: the active jobs of all slots advance together, one packed forward per step.

In: jobs (`ReplyJob`, `PrefillJob`) submitted with a `Priority`: data its owner updates
(urgent, held, when its speech so far ends playing) and the scheduler reads at each step.
Out: each job's spans through its `emit` callback, from the scheduler's thread;
`Ticket.finished` when it is done (or failed: `Ticket.error`).

One step:
1. Runnable jobs: not held (a held reply that has its first phrase waits for its endpoint),
   less than `max_ahead_s` ahead of its listener (`Priority.ahead_s`, seconds of its speech
   not yet played: it resumes as playback catches up), and, if it `may_hold`, with its owner
   caught up on its spans (the last one may have finished its first phrase and made it held: no
   step decodes past it while the final transcript needs the cores); while an urgent job runs, a job
   `defer_ahead_s` or more ahead sits the step out: it only has to stay ahead of playback,
   and a narrower step gives the urgent job its tokens sooner.
2. Order: urgent jobs (a reply without its first phrase, an end-of-turn score) first, then
   the others, oldest first. Every decoding job gets its 1 + k tokens; prefill chunks share
   what is left of `step_tokens` (unbounded when no other job is decoding).
3. k: one decoding job asks its own controller (the single-sequence rule, unchanged); with
   more, `plan_batch` maximises sum_i w_i E_i[tokens | k_i] / c(T) over the packed width T
   (urgent w = 1, talking w = `talking_weight`: they only need to stay ahead of playback).
4. One `forward_packed` over all feeds; each job takes its rows; finished jobs free their slot.
Slots: which free slot a job takes and which slot's cache it copies instead of prefilling
is `decode.slots`' policy (copied when `share_min_tokens` longer; 46 KB a token for SmolLM2).
Cost per step: one target forward over T tokens (`width_cost_s`, learnt as steps run).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from decode.controller import AdaptiveController, interpolate_cost, plan_batch
from decode.drafters import common_prefix_len
from decode.jobs import Job
from decode.slots import pick_slot, share_source
from decode.spans import Span
from decode.speculative import SpeculativeDecoder
from decode.target import Forward

log = logging.getLogger(__name__)

OWNER_WAIT_S = 0.05  # longest a job that may hold waits for its owner to read its spans
SHARE_MIN_TOKENS = 4  # a prefix cached in another slot is copied when this much longer than the slot's own


def dec_full(dec: SpeculativeDecoder, tokens: list[int]) -> bool:
    """Feeding `tokens` would run past the slot's cache."""
    return dec.target.length + len(tokens) > dec.target.max_len


@dataclass
class Priority:
    """A job's standing, written by its owner (any thread) and read by the scheduler at each step.

    ahead_s(now) = max(0, played_until_t - now): seconds of its speech sent and not yet played.
    """

    urgent: bool = True  # a reply awaiting its first phrase, an end-of-turn score
    held: bool = False  # waits for its owner (a prepared reply awaiting its endpoint)
    played_until_t: float = 0.0  # perf_counter() when the speech it produced so far ends playing
    may_hold: bool = False  # a span may make it held (a prepared reply before its endpoint)
    emitted: int = 0  # spans the scheduler gave the owner (written by the scheduler)
    read: int = 0  # spans the owner has acted on (written by the owner, then `StepScheduler.wake`)
    emitted_t: float = 0.0  # perf_counter() of the last span given

    def ahead_s(self, now: float) -> float:
        """Seconds of its speech not yet played at `now`."""
        return max(0.0, self.played_until_t - now)

    def owner_behind(self, now: float, wait_s: float) -> bool:
        """The owner of a job that may become held has not yet read its last span (that span may
        end its first phrase and hold it), for at most `wait_s` after that span."""
        return self.may_hold and self.read < self.emitted and now - self.emitted_t < wait_s


@dataclass(eq=False)
class Ticket:
    """One submitted job: where its spans go and how it ended."""

    make: Callable[[SpeculativeDecoder], Job]  # builds the job on the slot it gets
    prompt: list[int]
    emit: Callable[[Span], None]
    priority: Priority = field(default_factory=Priority)
    done: Callable[[Ticket], None] | None = None  # called (scheduler thread) once it finished or failed
    order: int = 0
    job: Job | None = None
    slot: int = -1
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    finished_t: float = 0.0  # perf_counter() when it finished

    def wait(self) -> Job:
        """Block until the job is done; raise what it failed with."""
        self.finished.wait()
        if self.error is not None:
            raise self.error
        return self.job


@dataclass
class SchedulerStats:
    """What the scheduler did: steps, tokens, and how many sequences shared each step."""

    steps: int = 0
    tokens_fed: int = 0  # packed into forwards: prefill, last tokens and drafts
    tokens_out: int = 0  # reply tokens emitted
    busy_s: float = 0.0  # time spent in forwards
    batch_sizes: Counter = field(default_factory=Counter)  # sequences per step -> steps

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "tokens_fed": self.tokens_fed,
            "tokens_out": self.tokens_out,
            "busy_s": round(self.busy_s, 3),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class StepScheduler:
    """Runs jobs over `slots` (decoders on slots of one target) in batched steps, on its own thread."""

    def __init__(
        self,
        slots: list[SpeculativeDecoder],
        forward_packed: Callable | None,
        width_cost_s: dict[int, float],
        step_tokens: int = 64,
        talking_weight: float = 0.25,
        cost_ema: float = 0.2,
        threaded: bool = True,
        defer_ahead_s: float = float("inf"),
        max_ahead_s: float = float("inf"),
    ) -> None:
        """`forward_packed(feeds)` of the slots' shared target (None: slots run one after another)."""
        if not slots:
            raise ValueError("the scheduler needs at least one slot")
        self.slots, self.forward_packed = slots, forward_packed
        self.width_cost_s = dict(width_cost_s)  # packed width T -> seconds of one forward
        self.step_tokens, self.talking_weight, self.cost_ema = step_tokens, talking_weight, cost_ema
        self.defer_ahead_s, self.max_ahead_s = defer_ahead_s, max_ahead_s
        self.owner_wait_s = OWNER_WAIT_S
        self.share_min_tokens = SHARE_MIN_TOKENS
        self.stats = SchedulerStats()
        self._used = [0.0] * len(slots)  # last use, for LRU
        self._busy: list[Ticket | None] = [None] * len(slots)
        self._waiting: list[Ticket] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="decode-steps", daemon=True)
        if threaded:
            self._thread.start()
            atexit.register(self.close)  # a step running at interpreter exit aborts the process

    # ---- submitting ----------------------------------------------------------------
    def submit(
        self,
        make: Callable[[SpeculativeDecoder], Job],
        prompt: list[int],
        emit: Callable[[Span], None] = lambda span: None,
        priority: Priority | None = None,
        done: Callable[[Ticket], None] | None = None,
    ) -> Ticket:
        """Queue a job; it starts on a slot at the next step that has one free."""
        ticket = Ticket(make, list(prompt), emit, priority or Priority(), done, next(self._order))
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode scheduler is closed")
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    def wake(self) -> None:
        """Re-check held jobs now (one was released)."""
        with self._cond:
            self._cond.notify()

    def reset_slots(self) -> None:
        """Forget every idle slot's cached context (benchmarks that must not reuse a prefill)."""
        with self._cond:
            for i, ticket in enumerate(self._busy):
                if ticket is None:
                    self._reset_slot(i)

    def close(self) -> None:
        """Stop the thread after the current step; waiting and running jobs fail."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ---- slots ---------------------------------------------------------------------
    def _cached(self) -> list[list[int]]:
        return [dec.cached for dec in self.slots]

    def _pick_slot(self, prompt: list[int]) -> int | None:
        return pick_slot(self._cached(), [t is None for t in self._busy], self._used, prompt)

    def _assign(self) -> None:
        """Start waiting tickets on free slots, urgent ones first; a cancelled job's slot is freed
        first, so a job sharing its prefix (the next hypothesis' reply) reuses its cache."""
        for ticket in self._busy:
            if ticket is not None and ticket.job.stop_if_cancelled():
                self._complete(ticket)
        self._waiting.sort(key=lambda t: (not t.priority.urgent, t.order))
        while self._waiting and (slot := self._pick_slot(self._waiting[0].prompt)) is not None:
            ticket = self._waiting.pop(0)
            self._share_prefix(slot, ticket.prompt)
            try:
                ticket.job = ticket.make(self.slots[slot])
            except Exception as err:  # a bad prompt fails its ticket, not the scheduler
                self._finish(ticket, err)
                continue
            ticket.slot = slot
            self._busy[slot] = ticket
            if ticket.job.done:  # nothing to compute (a prefill already cached)
                self._complete(ticket)

    def _share_prefix(self, slot: int, prompt: list[int]) -> None:
        """Copy into `slot` the longest prefix of `prompt` another slot caches (`share_source`):
        a session's history prefilled in one slot serves its next job on any slot."""
        source = share_source(self._cached(), slot, prompt, self.share_min_tokens)
        shared = source is not None and self.slots[slot].adopt_prefix(self.slots[source[0]], source[1])
        if log.isEnabledFor(logging.DEBUG):
            got = source[1] if shared else common_prefix_len(self.slots[slot].cached, prompt)
            log.debug(
                "slot %d: %d of %d prompt tokens cached%s",
                slot,
                got,
                len(prompt),
                f" (from slot {source[0]})" if shared else "",
            )

    def _finish(self, ticket: Ticket, error: BaseException | None = None) -> None:
        ticket.error = error
        if ticket.slot >= 0:
            self._busy[ticket.slot] = None
            self._used[ticket.slot] = time.perf_counter()
        ticket.finished_t = time.perf_counter()
        ticket.finished.set()
        if ticket.done is not None:
            try:
                ticket.done(ticket)
            except Exception:  # a caller's callback must not stop the scheduler
                log.exception("done callback failed")

    def _complete(self, ticket: Ticket) -> None:
        for span in ticket.job.drain():
            self.stats.tokens_out += len(span.token_ids)
            ticket.priority.emitted += 1
            ticket.priority.emitted_t = time.perf_counter()
            try:
                ticket.emit(span)
            except Exception:  # a caller that went away must not stop the others' step
                log.exception("span callback failed; cancelling that job")
                ticket.job.done = True
        if ticket.job.done:
            self._finish(ticket)

    # ---- steps ---------------------------------------------------------------------
    def run_step(self) -> bool:
        """Start waiting jobs on free slots, then advance every runnable job by one step.

        False when no job could run. The scheduler's thread calls it in a loop; a test without
        the thread (`threaded=False`) calls it to place joins and cancels at chosen steps.
        """
        with self._cond:
            self._assign()
            running = self._runnable()
        if not running:
            return False
        try:
            self._step(running)
        except Exception as err:  # the forward failed: these jobs end with the error
            log.exception("decode step failed")
            with self._cond:
                for ticket in running:
                    if not ticket.finished.is_set():
                        self._reset_slot(ticket.slot)
                        self._finish(ticket, err)
        return True

    def _runnable(self) -> list[Ticket]:
        """Jobs that take part in the next step (rule 1 above)."""
        now = time.perf_counter()
        running = [
            t
            for t in self._busy
            if t is not None
            and not t.priority.held
            and t.priority.ahead_s(now) < self.max_ahead_s
            and not t.priority.owner_behind(now, self.owner_wait_s)
        ]
        if any(t.priority.urgent for t in running):
            running = [t for t in running if t.priority.urgent or t.priority.ahead_s(now) < self.defer_ahead_s]
        return running

    def _loop(self) -> None:
        while not self._closed:
            if not self.run_step():
                with self._cond:
                    if not self._closed:  # held jobs are polled; otherwise sleep until a submit
                        self._cond.wait(timeout=0.02 if any(self._busy) or self._waiting else None)
        with self._cond:
            closed = RuntimeError("the decode scheduler closed")
            for ticket in self._waiting + [t for t in self._busy if t is not None]:
                self._finish(ticket, closed)
            self._waiting.clear()

    def _reset_slot(self, slot: int) -> None:
        dec = self.slots[slot]
        dec.target.reset()
        dec.forget()

    def _step(self, running: list[Ticket]) -> None:
        running.sort(key=lambda t: (not t.priority.urgent, t.order))
        decoding = [t for t in running if not t.job.prefilling]
        ks = self._plan(decoding)
        room = self.step_tokens - sum(k + 1 for k in ks.values())
        alone = len(running) == 1
        feeds, fed = [], []
        for ticket in running:
            if ticket in ks:
                tokens = ticket.job.feed(k=ks[ticket])
            else:
                limit = None if not decoding and len(running) == 1 else max(room, 1)
                tokens = ticket.job.feed(max_tokens=limit)
                room -= len(tokens)
            target = self.slots[ticket.slot].target
            if tokens and dec_full(self.slots[ticket.slot], tokens):
                need = target.length + len(tokens)
                error = ValueError(
                    f"context of {need} tokens exceeds the cache ({target.max_len}); lower llm.history_tokens"
                )
                with self._cond:
                    self._finish(ticket, error)
            elif tokens:
                feeds.append((self.slots[ticket.slot], tokens, ticket.job.last_only, ticket.job.parents))
                fed.append(ticket)
            else:
                with self._cond:
                    self._complete(ticket)
        if not feeds:
            return
        t = time.perf_counter()
        outs = self._forward(feeds)
        seconds = time.perf_counter() - t
        width = sum(len(feed[1]) for feed in feeds)
        self._learn_cost(width, seconds)
        self.stats.steps += 1
        self.stats.tokens_fed += width
        self.stats.busy_s += seconds
        self.stats.batch_sizes[len(feeds)] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "step: %d urgent of %d jobs, widths %s, %.0f ms",
                sum(t.priority.urgent for t in fed),
                len(fed),
                [len(feed[1]) for feed in feeds],
                seconds * 1e3,
            )
        with self._cond:
            for ticket, out in zip(fed, outs):
                ticket.job.take(out, seconds, shared=not alone)
                self._complete(ticket)
            self._cond.notify_all()

    def _forward(self, feeds: list[tuple[SpeculativeDecoder, list[int], bool, list[int] | None]]) -> list[Forward]:
        """One packed forward; a job's `parents` make its feed a draft tree."""
        if self.forward_packed is not None:
            return self.forward_packed([(dec.target.index, tokens, last, tree) for dec, tokens, last, tree in feeds])
        return [
            dec.target.forward(tokens) if tree is None else dec.target.forward(tokens, tree)
            for dec, tokens, _, tree in feeds
        ]

    def _plan(self, decoding: list[Ticket]) -> dict[Ticket, int]:
        """k per decoding job: its own controller alone, `plan_batch` together."""
        if len(decoding) <= 1:
            return {t: t.job.controller.next_k() for t in decoding}
        adaptive = [t for t in decoding if isinstance(t.job.controller, AdaptiveController)]
        ks = {t: t.job.controller.next_k() for t in decoding if t not in adaptive}
        if adaptive:
            ctls = [t.job.controller for t in adaptive]
            planned = plan_batch(
                [c.acceptance() for c in ctls],
                [1.0 if t.priority.urgent else self.talking_weight for t in adaptive],
                [c.k_max for c in ctls],
                [int(c.probe_due) for c in ctls],
                sum(k + 1 for k in ks.values()),
                self.width_cost_s,
                max(c.draft_cost_s for c in ctls),
            )
            ks.update(zip(adaptive, planned))
        return ks

    def _learn_cost(self, width: int, seconds: float) -> None:
        old = self.width_cost_s.get(width)
        self.width_cost_s[width] = seconds if old is None else (1 - self.cost_ema) * old + self.cost_ema * seconds

    def cost(self, width: int) -> float:
        """The current estimate of one forward of `width` packed tokens."""
        return interpolate_cost(self.width_cost_s, width)
