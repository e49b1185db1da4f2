"""A `VoiceServer` without models: scripted sessions whose replies wait for the test's word.

`ScriptedSession` answers a `text` turn with the protocol's events (final transcript, reply,
audio, turn_end with a turn gap of `GAP_S`), holding the reply until `hold` is cleared, so a
test can drain the server while a turn is in progress. `serving(...)` runs the real
`VoiceServer` (health, metrics, drain, protocol) on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace

import numpy as np

from voice.config import load_config
from voice.session_events import AudioOut, AudioStart, ReplyText, Speech, Transcript, TurnEnd, VadState
from voice.tts import AudioChunk
from voice.turns import TurnMetrics
from web.server import VoiceServer

GAP_S = 0.3
RATE_HZ = 22050


class ScriptedSession:
    """Speech start, final transcript, then (once `stack.hold` is clear) reply, audio and turn_end."""

    def __init__(self, stack, cfg, session_id=None) -> None:
        self.stack, self.events = stack, asyncio.Queue()
        self._turn: asyncio.Task | None = None

    @property
    def idle(self) -> bool:
        return self._turn is None or self._turn.done()

    @property
    def replying(self) -> bool:
        return not self.idle

    async def feed_audio(self, samples, t=None) -> None:
        pass

    async def user_text(self, text: str) -> None:
        self._turn = asyncio.ensure_future(self._reply(text))

    async def _reply(self, text: str) -> None:
        t = time.perf_counter()
        await self.events.put(VadState(Speech.START, t))  # as a spoken turn would
        await self.events.put(Transcript(text, True, t))
        while self.stack.hold.is_set():
            await asyncio.sleep(0.01)
        await self.events.put(ReplyText("Paris.", t))
        await self.events.put(AudioStart(RATE_HZ, t))
        await self.events.put(AudioOut(AudioChunk(np.zeros(RATE_HZ // 10, np.int16), RATE_HZ, t)))
        await self.events.put(
            TurnEnd(
                TurnMetrics(
                    speech_end=t,
                    first_audio=t + GAP_S,
                    last_audio=t + 1,
                    tokens=3,
                    acceptance=0.5,
                    mean_draft_len=2.0,
                    transcript=text,
                    reply="Paris.",
                )
            )
        )

    async def interrupt(self) -> None:
        pass

    async def close(self) -> None:
        if self._turn is not None:
            self._turn.cancel()


def scripted_stack() -> SimpleNamespace:
    """What the server reads of a stack: the voice's rate, the target's layout, queues, decode totals."""
    stats = SimpleNamespace(
        as_dict=lambda: {"steps": 4, "tokens_fed": 12, "tokens_out": 8, "busy_s": 0.5, "batch_sizes": {"1": 4}}
    )
    worker = SimpleNamespace(waiting=lambda: 0)
    hold = asyncio.Event()
    return SimpleNamespace(
        tts=SimpleNamespace(rate_hz=RATE_HZ),
        asr_worker=worker,
        tts_worker=worker,
        llm=SimpleNamespace(target=None, scheduler=SimpleNamespace(stats=stats)),
        hold=hold,
    )


@contextlib.asynccontextmanager
async def serving(*overrides: str, loaded: bool = True):
    """A scripted `VoiceServer` listening on 127.0.0.1; yields (server, http URL)."""
    cfg = load_config(None, list(overrides))
    app = VoiceServer(cfg, scripted_stack() if loaded else None, session_factory=ScriptedSession)
    url: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(app.serve("127.0.0.1", 0, listening=url.set_result))
    try:
        yield app, await url
    finally:
        app.stopped.set()
        await task
