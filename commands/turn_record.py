"""What a client feeding the pipeline saw of one turn, in process or through a server.

In: a WAV (or its samples) fed in real time (`commands.pacing`) to an open protocol session.
Out: a `TurnRecord`: when the last voiced sample was fed (`commands.speech_end`), when the
first reply audio came back, the transcript, the reply and the server's `turn_end` metrics.
The turn gap is measured here, on the client. Cost: the clip's duration plus the reply.
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
from web.client import ServerError, closed_error, open_session

log = logging.getLogger(__name__)

STAGES = ("endpoint", "asr_final", "first_span", "first_audio")


@dataclass
class TurnRecord:
    """What a client (the bench, soak) saw of one turn (times in perf_counter seconds)."""

    audio: str
    speech_end: float = 0.0
    first_audio: float = 0.0
    transcript: str = ""
    reply: str = ""
    metrics: dict = field(default_factory=dict)  # the pipeline's turn_end metrics
    stamps: dict = field(default_factory=dict)  # absolute stage times, in-process only

    @property
    def turn_gap_ms(self) -> float | None:
        """First reply audio minus the true end of speech (None if either never came)."""
        return (self.first_audio - self.speech_end) * 1e3 if self.first_audio and self.speech_end else None

    def stages_ms(self) -> dict[str, float | None]:
        """Each stage's time after the bench's end of speech (through a server: the server's
        own figures, counted from its VAD's end of speech)."""
        out = {}
        for stage in STAGES:
            if self.stamps.get(stage) and self.speech_end:
                out[stage] = round((self.stamps[stage] - self.speech_end) * 1e3, 1)
            else:
                out[stage] = self.metrics.get(f"{stage}_ms")
        return out


async def run_inprocess_turn(stack, cfg: Config, path: Path) -> TurnRecord:
    """One turn through an in-process `VoiceSession`."""
    from voice.pipeline import VoiceSession
    from voice.session_events import AudioOut, Transcript, TurnEnd, TurnFailed, dispatch

    session = VoiceSession(stack, cfg)
    record, done = TurnRecord(str(path)), asyncio.Event()

    def audio(event: AudioOut) -> bool:
        record.first_audio = record.first_audio or time.perf_counter()
        return False

    def transcript(event: Transcript) -> bool:
        if event.final:
            record.transcript = event.text
        return event.final and not event.text  # no words: no reply comes

    def turn_end(event: TurnEnd) -> bool:
        m = event.metrics
        record.reply, record.metrics = m.reply, m.as_dict()
        record.stamps = {
            "endpoint": m.endpoint,
            "asr_final": m.asr_final,
            "llm_start": m.llm_start,
            "first_span": m.first_span,
            "first_audio": m.first_audio,
            "last_audio": m.last_audio,
            "prediction_started": m.prediction_started,
            "prediction_audio_ready": m.prediction_audio,
        }
        return True

    def error(event: TurnFailed) -> bool:
        log.warning("turn error: %s", event.message)
        return True

    handlers = {AudioOut: audio, Transcript: transcript, TurnEnd: turn_end, TurnFailed: error}

    async def consume() -> None:
        while not dispatch(await session.events.get(), handlers):  # True: the turn is over
            pass
        done.set()

    consumer = asyncio.ensure_future(consume())
    record.speech_end = await feed_realtime(lambda f: session.feed_audio(f), read_wav(path), done)
    consumer.cancel()
    await session.close()
    return record


async def spoken_turn(ws: ClientConnection, path: Path, audio: np.ndarray | None = None) -> TurnRecord:
    """One spoken turn on an open session, fed in real time."""
    record, done = TurnRecord(str(path)), asyncio.Event()

    async def receive() -> None:
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                if not record.first_audio:
                    record.first_audio = time.perf_counter()
                continue
            msg = json.loads(message)
            if msg["type"] == "transcript" and msg["final"]:
                record.transcript = msg["text"]
                if not msg["text"]:
                    break
            elif msg["type"] == "turn_end":
                record.reply, record.metrics = msg.get("reply", ""), msg["metrics"]
                break
            elif msg["type"] == "error":
                raise ServerError(f"server error {msg['code']}: {msg['message']}")
        done.set()

    receiver = asyncio.ensure_future(receive())

    async def send(frame: np.ndarray) -> None:
        if receiver.done():
            done.set()
            return
        await ws.send(float_to_pcm16(frame).tobytes())

    try:
        record.speech_end = await feed_realtime(send, read_wav(path) if audio is None else audio, done)
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
            await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:  # the turn's own error (if any) says why
            pass
        await ws.close()
