"""What a client feeding the pipeline saw of one turn, in process or through a server.

In: a WAV (or its samples) fed in real time (`commands.pacing`) to an in-process
`VoiceSession` or an open protocol session. Out: a `TurnRecord`: when the last voiced sample
was fed (`commands.speech_end`), when the first reply audio came back, the transcript, the
reply and the `turn_end` metrics. Both paths read the same events (`TurnRecord.take`; a
server's messages through `web.protocol.Decoder`). The turn gap is measured here, on the
client. Cost: the clip's duration plus the reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from audio.wavio import float_to_pcm16, read_wav
from commands.pacing import feed_realtime
from voice.config import Config
from voice.session_events import AudioOut, Transcript, TurnEnd, TurnFailed, dispatch
from voice.turns import TurnMetrics
from web.client import ServerError, closed_error, open_session
from web.protocol import Decoder, ErrorReport, MessageType, ServerEvent, ends_turn

log = logging.getLogger(__name__)

STAGES = ("endpoint", "asr_final", "first_span", "first_audio")


STAMPS = ("endpoint", "asr_final", "llm_start", "first_span", "first_audio", "last_audio", "prediction_started")


@dataclass
class TurnRecord:
    """What a client (the bench, soak) saw of one turn (times in perf_counter seconds)."""

    audio: str
    last_voiced_fed_t: float = 0.0  # when the bench fed the last voiced sample (`last_voiced_sample`)
    first_audio: float = 0.0
    transcript: str = ""
    reply: str = ""
    metrics: dict = field(default_factory=dict)  # the pipeline's turn_end metrics
    stamps: dict = field(default_factory=dict)  # absolute stage times, in-process only
    failure: str = ""  # "code: message" of the error that ended the turn ("" if none did)

    @property
    def turn_gap_ms(self) -> float | None:
        """First reply audio minus the true end of speech (None if either never came)."""
        if not (self.first_audio and self.last_voiced_fed_t):
            return None
        return (self.first_audio - self.last_voiced_fed_t) * 1e3

    def stages_ms(self) -> dict[str, float | None]:
        """Each stage's time after the bench's end of speech (through a server: the server's
        own figures, counted from its VAD's end of speech)."""
        out = {}
        for stage in STAGES:
            if self.stamps.get(stage) and self.last_voiced_fed_t:
                out[stage] = round((self.stamps[stage] - self.last_voiced_fed_t) * 1e3, 1)
            else:
                out[stage] = self.metrics.get(f"{stage}_ms")
        return out

    def take(self, event: ServerEvent | None) -> bool:
        """Record one event of the turn, from an in-process session or decoded from a server (the
        same events); True once the turn is over (`web.protocol.ends_turn`, or an error)."""
        handlers = {
            AudioOut: self._audio,
            Transcript: self._transcript,
            TurnEnd: self._turn_end,
            TurnFailed: self._failed,
            ErrorReport: self._failed,
        }
        dispatch(event, handlers)
        return bool(self.failure) or ends_turn(event)

    def _audio(self, event: AudioOut) -> None:
        self.first_audio = self.first_audio or time.perf_counter()  # received, not made: held audio waits

    def _transcript(self, event: Transcript) -> None:
        if event.final:
            self.transcript = event.text

    def _turn_end(self, event: TurnEnd) -> None:
        m = event.metrics
        self.reply, self.metrics = m.reply, m.as_dict()
        if isinstance(m, TurnMetrics):  # in process: the stage times themselves
            self.stamps = {stage: getattr(m, stage) for stage in STAMPS}
            self.stamps["prediction_audio_ready"] = m.prediction_audio

    def _failed(self, event: TurnFailed | ErrorReport) -> None:
        self.failure = f"{event.code}: {event.message}"


async def run_inprocess_turn(stack, cfg: Config, path: Path) -> TurnRecord:
    """One turn through an in-process `VoiceSession`."""
    from voice.pipeline import VoiceSession

    session = VoiceSession(stack, cfg)
    record, done = TurnRecord(str(path)), asyncio.Event()

    async def consume() -> None:
        while not record.take(await session.events.get()):
            pass
        if record.failure:
            log.warning("turn error: %s", record.failure)
        done.set()

    consumer = asyncio.ensure_future(consume())
    record.last_voiced_fed_t = await feed_realtime(lambda f: session.feed_audio(f), read_wav(path), done)
    consumer.cancel()
    await session.close()
    return record


async def spoken_turn(ws: ClientConnection, path: Path, audio: np.ndarray | None = None) -> TurnRecord:
    """One spoken turn on an open session, fed in real time; `ServerError` when the server reports an error."""
    record, done, decoder = TurnRecord(str(path)), asyncio.Event(), Decoder()

    async def receive() -> None:
        while not record.take(decoder.decode(await ws.recv())):
            pass
        if record.failure:
            raise ServerError(f"server error {record.failure}")
        done.set()

    receiver = asyncio.ensure_future(receive())

    async def send(frame: np.ndarray) -> None:
        if receiver.done():
            done.set()
            return
        await ws.send(float_to_pcm16(frame).tobytes())

    try:
        record.last_voiced_fed_t = await feed_realtime(send, read_wav(path) if audio is None else audio, done)
    except ConnectionClosed as err:
        receiver.cancel()
        raise closed_error(err) from None
    if receiver.done() and (err := receiver.exception()):
        raise closed_error(err) if isinstance(err, ConnectionClosed) else err
    receiver.cancel()
    return record


async def run_server_turn(url: str, path: Path) -> TurnRecord:
    """One spoken turn on a fresh session."""
    ws = await open_session(url)
    try:
        return await spoken_turn(ws, path)
    finally:
        try:
            await ws.send(json.dumps({"type": MessageType.STOP}))
        except ConnectionClosed:  # the turn's own error (if any) says why
            pass
        await ws.close()
