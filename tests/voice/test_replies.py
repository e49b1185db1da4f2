"""The embedded decoder's side of the reply interface (`voice.replies`) on a tiny random Llama:
a scheduler job read on the caller's event loop is the plain greedy reply, closing it or
cancelling its reader stops the job at the next step with no span after, a failed job raises
from the reply, a reader that has not acted on a span holds a prepared reply, and a score is
awaited without a thread waiting for it."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest
import torch

from conftest import ByteTokenizer, plain_greedy, tiny_llama
from decode.controller import FixedController
from decode.drafters import NgramDrafter
from decode.jobs import GenerationSettings, PrefillJob, ReplyJob
from decode.scheduler import Priority, StepScheduler
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget
from voice.replies import ScheduledReply, scheduled_job

TARGET = tiny_llama(seed=0)


def scheduler(threaded: bool, slots: int = 2) -> StepScheduler:
    """`threaded=False`: the test places each step (`run_step`) on the loop's own thread."""
    parent = StaticLlamaTarget(TARGET, max_len=160)
    decs = [
        SpeculativeDecoder(parent.slot(i), ByteTokenizer(), NgramDrafter(3, 1), FixedController(2))
        for i in range(slots)
    ]
    return StepScheduler(decs, parent.forward_packed, {1: 1.0, 4: 1.2, 16: 2.0}, step_tokens=16, threaded=threaded)


def reply(sched: StepScheduler, prompt: list[int], n: int, priority: Priority | None = None) -> ScheduledReply:
    settings = GenerationSettings(max_new_tokens=n)
    return ScheduledReply(sched, lambda dec, cancel: ReplyJob(dec, prompt, settings, cancel), prompt, priority, n)


async def settle() -> None:
    """Let the callbacks an unthreaded step posted run."""
    for _ in range(3):
        await asyncio.sleep(0)


@pytest.fixture
def threads_started(monkeypatch) -> list[str]:
    """Names of the threads started from here on."""
    started: list[str] = []
    start = threading.Thread.start

    def recording(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", recording)
    return started


def test_replies_read_on_the_loop_are_plain_greedy_and_no_thread_waits_for_them(threads_started):
    sched = scheduler(threaded=True)
    assert threads_started == ["decode-steps"]  # the compute thread, started with the scheduler

    async def main() -> list[tuple[list[int], bool, int]]:
        async def read(r: ScheduledReply) -> tuple[list[int], bool, int]:
            return [t async for span in r for t in span.token_ids], r.capped, r.stats.tokens

        return await asyncio.gather(read(reply(sched, [1, 2, 3], 12)), read(reply(sched, [4, 5, 6, 7], 9)))

    try:
        (first, capped, tokens), (second, *_) = asyncio.run(main())
    finally:
        sched.close()
    assert first == plain_greedy(TARGET, [1, 2, 3], 12) and second == plain_greedy(TARGET, [4, 5, 6, 7], 9)
    assert capped and tokens == 12
    assert threads_started == ["decode-steps"]  # no executor thread parked on a ticket


def test_closing_a_reply_stops_its_job_at_the_next_step_with_no_span_after():
    async def main() -> None:
        sched = scheduler(threaded=False)
        closed, other = reply(sched, [5, 9, 13, 5, 9, 13], 40), reply(sched, [1, 2, 3], 12)
        sched.run_step()  # prefill
        sched.run_step()  # the first tokens
        await settle()
        said = await closed.__anext__()
        assert said.token_ids and not closed.ticket.finished.is_set()
        await closed.aclose()
        sched.run_step()
        assert closed.ticket.finished.is_set() and closed.ticket.job.stats.cancelled
        assert closed.ticket.job.stats.tokens < 40
        await settle()
        assert [span async for span in closed] == []  # spans queued before the close are not read either
        while sched.run_step():
            pass
        assert [t async for span in other for t in span.token_ids] == plain_greedy(TARGET, [1, 2, 3], 12)

    asyncio.run(main())


def test_cancelling_the_task_reading_a_reply_stops_its_job():
    async def main() -> None:
        sched = scheduler(threaded=False)
        r, spans = reply(sched, [5, 9, 13, 5, 9, 13], 40), []

        async def read() -> None:
            async with aclosing(r):
                async for span in r:
                    spans.append(span)

        reader = asyncio.ensure_future(read())
        sched.run_step()
        sched.run_step()
        await settle()
        assert spans and not reader.done()  # it waits for the next step's spans
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        sched.run_step()
        assert r.ticket.finished.is_set() and r.ticket.job.stats.cancelled and len(spans) < 40

    asyncio.run(main())


def test_a_failed_job_raises_from_the_reply():
    async def main() -> None:
        sched = scheduler(threaded=False)
        too_long = reply(sched, list(range(1, 64)) * 3, 4)
        sched.run_step()
        with pytest.raises(ValueError, match="exceeds the cache"):
            async for _ in too_long:
                pass

    asyncio.run(main())


def test_a_prepared_reply_takes_no_step_until_its_reader_asked_for_the_next_span():
    """Asking for the next span says the last one was acted on (it may have held the reply)."""

    async def main() -> None:
        sched = scheduler(threaded=False)
        sched.owner_wait_s = 1e9  # no clock decides here: only the reader's requests
        prepared = Priority(may_hold=True)
        r = reply(sched, [1, 2, 3], 8, prepared)
        while not prepared.emitted:
            assert sched.run_step()
        await settle()
        spans = [await r.__anext__()]
        emitted = prepared.emitted
        assert not sched.run_step() and prepared.emitted == emitted  # the reader has not acted on it yet
        while not spans[-1].final:
            asking = asyncio.ensure_future(r.__anext__())
            await settle()  # asking marks the last span read
            assert not asking.done() and sched.run_step()  # so the reply takes its next step
            spans.append(await asking)
        assert [t for s in spans for t in s.token_ids] == plain_greedy(TARGET, [1, 2, 3], 8)

    asyncio.run(main())


def test_a_score_is_awaited_on_the_loop_and_is_the_targets(threads_started):
    sched = scheduler(threaded=True)
    prompt = [9, 8, 7, 6, 5]
    try:
        job = asyncio.run(scheduled_job(sched, lambda dec: PrefillJob(dec, prompt, token_ids=[4]), prompt))
    finally:
        sched.close()
    with torch.inference_mode():
        want = torch.softmax(TARGET(torch.tensor([prompt])).logits[0, -1], -1)[4].item()
    assert job.prob == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert threads_started == ["decode-steps"]
