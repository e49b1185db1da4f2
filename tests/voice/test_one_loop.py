"""One event loop per process: a spoken turn through a `VoiceSession` on the embedded models, with
the embedded decoder and with an OpenAI-compatible server (`tests/fake_openai.py`), starts no
thread and no event loop besides the test's own. The compute threads (decode-steps, asr, tts)
started when the models loaded; every await of the turn is on the one loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from fake_openai import REPLY, SERVER_THREAD, ChatServer

from audio.wavio import read_wav
from guards import HANG_GUARD_S
from voice.config import load_config
from voice.pipeline import VoiceSession
from voice.session_events import TurnEnd, TurnFailed
from voice.stack import remote_replies

pytestmark = pytest.mark.slow

FRAME = 320  # 20 ms at 16 kHz


def record_starts(monkeypatch) -> SimpleNamespace:
    """From here on: the names of the threads started (but the fake server's) and the event loops made."""
    seen = SimpleNamespace(threads=[], loops=[])
    thread_start, loop_init = threading.Thread.start, asyncio.BaseEventLoop.__init__

    def start(self: threading.Thread) -> None:
        if self.name != SERVER_THREAD:
            seen.threads.append(self.name)
        thread_start(self)

    def init(self: asyncio.BaseEventLoop, *args, **kwargs) -> None:
        seen.loops.append(self)
        loop_init(self, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(asyncio.BaseEventLoop, "__init__", init)
    return seen


async def spoken_turn(stack, cfg, audio: np.ndarray) -> list:
    """Feed `audio` in real time, then silence, until the turn ends; its events."""
    session = VoiceSession(stack, cfg)
    audio = np.concatenate([np.zeros(4800, np.float32), audio, np.zeros(16000 * 4, np.float32)])

    async def feed() -> None:
        for i in range(0, len(audio), FRAME):
            await session.feed_audio(audio[i : i + FRAME])
            await asyncio.sleep(FRAME / 16000)

    feeder, events = asyncio.ensure_future(feed()), []
    while not isinstance(events[-1] if events else None, (TurnEnd, TurnFailed)):
        events.append(await asyncio.wait_for(session.events.get(), HANG_GUARD_S))
    feeder.cancel()
    await session.close()
    return events


@pytest.mark.parametrize("backend", ["local", "openai"])
def test_a_spoken_turn_runs_on_one_event_loop_and_starts_no_thread(stack, question_wav, backend, monkeypatch):
    server = ChatServer() if backend == "openai" else None
    try:
        seen = record_starts(monkeypatch)
        cfg = load_config(None, [] if server is None else ["llm.backend=openai", f"llm.base_url={server.url}"])
        if server is not None:  # built as `load_stack` builds it
            stack = dataclasses.replace(stack, remote=remote_replies(cfg, stack.llm.token_ids))
        events = asyncio.run(spoken_turn(stack, cfg, read_wav(question_wav)))
    finally:
        if server is not None:
            server.close()
    end = events[-1]
    assert isinstance(end, TurnEnd), end
    assert "paris" in end.metrics.reply.lower()
    if server is not None:
        assert end.metrics.reply == "".join(REPLY) and server.requests
    assert seen.threads == []  # no thread parked per await, no backend thread
    assert len(seen.loops) == 1  # asyncio.run's
