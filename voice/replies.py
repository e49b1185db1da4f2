"""The reply interface both backends serve, and the embedded decoder's side of it.

In: the conversation (chat messages) and the reply's scheduling `Priority`. Out: a
`ReplyStream` read on the caller's event loop, `async for span in replies.reply(messages)`,
that ends at the model's end token or the token cap and raises what the reply failed with.
Closing it (`aclose`, or cancelling the task that reads it) stops the reply: no span comes
after, and the backend stops decoding it. The embedded decoder (`voice.llm.ReplyModel`) runs
on the decode scheduler's thread: `ScheduledReply` and `scheduled_job` carry its callbacks into
the loop (`call_soon_threadsafe`), so no thread waits on a job. An OpenAI-compatible server
(`voice.remote_llm.RemoteReplies`) is read on the loop itself. Cost: one loop callback per span.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Protocol

from decode.jobs import DecodeStats, Job
from decode.scheduler import Priority, StepScheduler, Ticket
from decode.spans import Span
from decode.speculative import SpeculativeDecoder


class ReplyStream(Protocol):
    """One reply's spans, read on the event loop that started it."""

    def __aiter__(self) -> AsyncIterator[Span]: ...

    async def __anext__(self) -> Span: ...

    async def aclose(self) -> None:
        """Stop the reply: no span is returned after, and its backend stops decoding it."""

    @property
    def stats(self) -> DecodeStats:
        """What decoding did so far: tokens, steps, acceptance."""

    @property
    def capped(self) -> bool:
        """Decoding ended at the token cap (`llm.max_new_tokens`), not at the model's end."""


class Replies(Protocol):
    """What writes the replies: the embedded decoder or an OpenAI-compatible server."""

    def reply(self, messages: list[dict[str, str]], priority: Priority | None = None) -> ReplyStream:
        """Start the reply to `messages`; `priority`: its standing with the embedded scheduler
        (urgent, held, playback), updated by its owner while it decodes."""


class ScheduledReply:
    """One reply job on the decode scheduler, read on the event loop that submitted it.

    The scheduler's thread posts each span and the job's end into the loop. Asking for the next
    span tells the scheduler the last one was acted on (`Priority.read`: a prepared reply takes
    no step past a span that may hold it). Closing sets the job's cancel flag: the scheduler
    ends it at its next step.
    """

    def __init__(
        self,
        scheduler: StepScheduler,
        make: Callable[[SpeculativeDecoder, threading.Event], Job],
        prompt: list[int],
        priority: Priority | None,
        max_new_tokens: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._scheduler, self._max_new_tokens = scheduler, max_new_tokens
        self._spans: asyncio.Queue[Span | None] = asyncio.Queue()
        self._cancel = threading.Event()  # read by the job at each step
        self._unread = False  # a span was returned and its reader has not asked for the next yet
        self._closed = False
        self.priority = priority or Priority()
        self.ticket: Ticket = scheduler.submit(
            lambda dec: make(dec, self._cancel), prompt, self._post, self.priority, lambda _: self._post(None)
        )

    def _post(self, span: Span | None) -> None:
        """Scheduler thread: hand a span (None: the job ended) to the loop."""
        try:
            self._loop.call_soon_threadsafe(self._spans.put_nowait, span)
        except RuntimeError:  # the loop closed: nobody reads this reply any more
            self._cancel.set()

    def __aiter__(self) -> ScheduledReply:
        return self

    async def __anext__(self) -> Span:
        self._mark_read()
        if self._closed:
            raise StopAsyncIteration
        span = await self._spans.get()
        if span is None:
            self._closed = True
            if self.ticket.error is not None:
                raise self.ticket.error
            raise StopAsyncIteration
        self._unread = True
        return span

    def _mark_read(self) -> None:
        if self._unread:
            self._unread = False
            self.priority.read += 1
            self._scheduler.wake()

    async def aclose(self) -> None:
        """Cancel the job (the scheduler ends it at its next step); no span is returned after."""
        self._mark_read()
        if not self._closed:
            self._closed = True
            self._cancel.set()
            self._scheduler.wake()

    @property
    def stats(self) -> DecodeStats:
        """The job's counts (empty if it failed before it started)."""
        job = self.ticket.job
        return job.stats if job is not None else DecodeStats()

    @property
    def capped(self) -> bool:
        """It ended at `max_new_tokens`."""
        return self.stats.tokens >= self._max_new_tokens


async def scheduled_job(scheduler: StepScheduler, make: Callable[[SpeculativeDecoder], Job], prompt: list[int]) -> Job:
    """Run one job on the scheduler and await it on this loop; raise what it failed with."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[Ticket] = loop.create_future()

    def settle(ticket: Ticket) -> None:
        if not ended.done():  # its awaiter may have been cancelled
            ended.set_result(ticket)

    def done(ticket: Ticket) -> None:
        try:
            loop.call_soon_threadsafe(settle, ticket)
        except RuntimeError:  # the loop closed: nobody awaits it
            pass

    scheduler.submit(make, prompt, done=done)
    ticket = await ended
    if ticket.error is not None:
        raise ticket.error
    return ticket.job
