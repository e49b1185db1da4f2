"""A protocol client: streams a WAV to a running server in real time and times the turn.

In: a `ws://…/ws` URL (or an open session) and a WAV path. Out: a `TurnRecord` (as
in-process `voice bench`): the turn gap is measured here, on the client — first reply
audio received minus the time the last voiced sample was sent.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from audio.pacing import feed_realtime
from audio.wavio import float_to_pcm16, read_wav
from voice.errors import VoiceError
from voice.turns import TurnRecord

START = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}


class ServerError(VoiceError, RuntimeError):
    """The server answered with an `error` event."""


async def open_session(url: str, timeout_s: float = 60.0) -> ClientConnection:
    """Connect and start a session; returns the open websocket after `ready`."""
    ws = await connect(url, max_size=None)
    await ws.send(json.dumps(START))
    ready = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    if ready.get("type") != "ready":
        await ws.close()
        raise ServerError(f"server did not start the session: {ready}")
    return ws


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

    record.speech_end = await feed_realtime(send, read_wav(path) if audio is None else audio, done)
    if receiver.done() and receiver.exception():
        raise receiver.exception()
    receiver.cancel()
    return record


async def run_server_turn(url: str, path: Path) -> TurnRecord:
    """One spoken turn on a fresh session."""
    ws = await open_session(url)
    try:
        return await spoken_turn(ws, path)
    finally:
        await ws.send(json.dumps({"type": "stop"}))
        await ws.close()
