"""`voice serve`: the voice page over HTTP and the voice protocol over a websocket, one port.

In: browser or tool connections on 127.0.0.1 (by default). GET `/` and `/static/…` serve
the page from `web/static`; `/ws` upgrades to the protocol of `web/PROTOCOL.md`. Out: per
connection a `VoiceSession` over the shared models (loaded once): its events are sent as
JSON text messages and binary PCM. Models are shared through one worker thread each, so sessions
queue for the LLM (a waiting session sees its transcript at once and its reply when the
LLM is free). Bad input gets an `error` message and the session goes on.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import mimetypes
import signal
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from audio.frames import SAMPLE_RATE_HZ
from voice.config import Config
from voice.errors import VoiceError
from voice.models import LLM_DIR, PIPER_VOICE, WHISPER_DIR
from voice.pipeline import VoiceSession
from voice.session_events import (
    AudioOut,
    AudioStart,
    ReplyText,
    Transcript,
    TurnEnd,
    TurnError,
    VadState,
    dispatch,
    log_line,
)
from voice.stack import Stack

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SOCKET_LIMIT_FACTOR = 16  # messages over 16 x server.max_message_bytes close the socket (1009)
MAX_TEXT_CHARS = 2000
FORMATS = {"pcm_s16le": 2, "pcm_f32le": 4}


class ProtocolError(VoiceError, ValueError):
    """A client message the protocol does not allow; `code` goes into the error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_MESSAGES = {
    VadState: lambda e: {"type": "vad", "state": e.state},
    Transcript: lambda e: {"type": "transcript", "final": e.final, "text": e.text},
    ReplyText: lambda e: {"type": "reply", "text": e.text},
    AudioStart: lambda e: {"type": "audio_start", "sample_rate": e.rate_hz},
    TurnEnd: lambda e: {"type": "turn_end", "metrics": e.metrics.as_dict(), "transcript": e.metrics.transcript,
                        "reply": e.metrics.reply},
    TurnError: lambda e: {"type": "error", "code": e.code, "message": e.message},
    AudioOut: lambda e: e.chunk.samples.astype("<i2").tobytes(),
}


def event_message(event) -> str | bytes:
    """A pipeline event as a protocol message: reply audio as binary PCM, the rest as JSON."""
    msg = dispatch(event, _MESSAGES)
    if msg is None:
        raise TypeError(f"unknown event {event!r}")
    return msg if isinstance(msg, bytes) else json.dumps(msg)


class AudioInput:
    """Decodes the declared PCM format and resamples it to 16 kHz mono float32."""

    def __init__(self, start: dict, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        rate, fmt, channels = start.get("sample_rate"), start.get("format", "pcm_s16le"), start.get("channels", 1)
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
            raise ProtocolError("bad_sample_rate", f"sample_rate must be an integer 8000–48000, got {rate!r}")
        if fmt not in FORMATS:
            raise ProtocolError("bad_format", f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ProtocolError("bad_channels", f"channels must be 1 or 2, got {channels!r}")
        self.rate, self.width, self.channels = rate, FORMATS[fmt], channels
        self.dtype = "<i2" if fmt == "pcm_s16le" else "<f4"
        self.resampler = None if rate == SAMPLE_RATE_HZ else soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1,
                                                                                    dtype="float32")

    def decode(self, data: bytes) -> np.ndarray:
        """PCM bytes → 16 kHz mono float32; raises ProtocolError for malformed frames."""
        if not data:
            raise ProtocolError("empty_frame", "empty audio frame")
        if len(data) > self.max_frame_bytes:
            raise ProtocolError("frame_too_large",
                                f"audio frame of {len(data)} bytes exceeds {self.max_frame_bytes}")
        if len(data) % (self.width * self.channels):
            raise ProtocolError("bad_frame", f"frame length {len(data)} is not a whole number of samples")
        samples = np.frombuffer(data, dtype=self.dtype).astype(np.float32)
        if self.width == 2:
            samples /= 32768.0
        elif not np.isfinite(samples).all():
            raise ProtocolError("bad_samples", "audio frame contains NaN or infinity")
        if self.channels == 2:
            samples = samples.reshape(-1, 2).mean(axis=1)
        samples = np.clip(samples, -1.0, 1.0)
        return self.resampler.resample_chunk(samples) if self.resampler else samples


class VoiceServer:
    """Serves the page and voice sessions over the shared models."""

    def __init__(self, stack: Stack, cfg: Config) -> None:
        self.stack, self.cfg = stack, cfg
        self.sessions: set[str] = set()
        self._ids = itertools.count(1)

    # ---- HTTP ------------------------------------------------------------------
    def _origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: tools and the CLI send no Origin
            return True
        if origin in self.cfg.server.allowed_origins:
            return True
        return urlsplit(origin).netloc == request.headers.get("Host")

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Static files for plain GETs; the origin check for `/ws`."""
        path = urlsplit(request.path).path
        if path == "/ws":
            if not self._origin_allowed(request):
                return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            return None
        if path == "/stats":
            return connection.respond(HTTPStatus.OK, json.dumps(self.stats()) + "\n")
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        file = (STATIC / name).resolve()
        if STATIC not in file.parents or not file.is_file():
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        body = file.read_bytes()
        headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-cache")])
        return Response(200, "OK", headers, body)

    def stats(self) -> dict:
        """Sessions, asyncio tasks, threads, resident memory and the decode scheduler's totals
        (steps, tokens, batch sizes): for soak tests and operators."""
        import resource
        import threading

        rss_kb = 0
        try:
            with open("/proc/self/status") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"sessions": len(self.sessions), "tasks": len(asyncio.all_tasks()),
                "threads": threading.active_count(), "rss_bytes": rss_kb * 1024,
                "decode": self.stack.llm.scheduler.stats.as_dict()}

    def ready_message(self, sid: str) -> str:
        """The `ready` event: the session id, the reply audio's rate and the active configuration."""
        return json.dumps({"type": "ready", "session": sid, "output_sample_rate": self.stack.tts.rate_hz,
                           "config": self.active_config()})

    def active_config(self) -> dict:
        """What the page shows read-only: the models, drafter, controller, device and matmul layout."""
        models = self.cfg.models
        return {"llm": LLM_DIR if models.llm == "embedded" else models.llm,
                "drafter": self.cfg.decode.drafter, "controller": self.cfg.decode.controller,
                "device": self.cfg.llm.device, "dtype": self.cfg.llm.dtype,
                "linear_layout": getattr(self.stack.llm.target, "layout", None),
                "asr": WHISPER_DIR if models.asr == "embedded" else models.asr,
                "tts_voice": PIPER_VOICE.removesuffix(".onnx") if models.tts == "embedded" else models.tts}

    # ---- websocket ---------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        """One client connection: the protocol's state machine."""
        if len(self.sessions) >= self.cfg.server.max_sessions:
            await ws.send(json.dumps({"type": "error", "code": "server_full",
                                      "message": f"the server is full ({self.cfg.server.max_sessions} sessions); "
                                                 "try again later"}))
            await ws.close(1013, "server full")
            return
        sid = f"s{next(self._ids)}"
        self.sessions.add(sid)
        session: VoiceSession | None = None
        audio_in: AudioInput | None = None
        sender: asyncio.Task | None = None
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.cfg.server.idle_timeout_s)
                except asyncio.TimeoutError:
                    await ws.send(json.dumps({"type": "error", "code": "idle_timeout",
                                              "message": "no message for too long; closing"}))
                    break
                try:
                    if isinstance(message, bytes):
                        if session is None or audio_in is None:
                            raise ProtocolError("not_started", "send a `start` message before audio")
                        await session.feed_audio(audio_in.decode(message))
                        continue
                    msg = _parse(message)
                    kind = msg["type"]
                    if kind == "start":
                        if session is not None:
                            raise ProtocolError("already_started", "the session has already started")
                        audio_in = AudioInput(msg, self.cfg.server.max_message_bytes)
                        session = VoiceSession(self.stack, self.cfg, session_id=sid)
                        sender = asyncio.ensure_future(self._send_events(ws, session))
                        await ws.send(self.ready_message(sid))
                    elif session is None and kind in ("text", "interrupt"):
                        raise ProtocolError("not_started", "send a `start` message first")
                    elif kind == "text":
                        await session.user_text(_turn_text(msg))
                    elif kind == "interrupt":
                        await session.interrupt()
                    elif kind == "stop":
                        break
                    else:
                        raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
                except ProtocolError as err:
                    await ws.send(json.dumps({"type": "error", "code": err.code, "message": str(err)}))
        except ConnectionClosed:
            pass
        except Exception:  # never let one session's bug take the server down
            log.exception(log_line("session_failed", session=sid))
            await _send_quietly(ws, {"type": "error", "code": "internal", "message": "internal error; session closed"})
        finally:
            self.sessions.discard(sid)
            if session is not None:
                await session.close()
            if sender is not None:
                sender.cancel()

    async def _send_events(self, ws: ServerConnection, session: VoiceSession) -> None:
        try:
            while True:
                await ws.send(event_message(await session.events.get()))
        except ConnectionClosed:
            pass


async def _send_quietly(ws: ServerConnection, msg: dict) -> None:
    try:
        await ws.send(json.dumps(msg))
    except ConnectionClosed:
        pass


def _parse(message: str) -> dict:
    try:
        msg = json.loads(message)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"message is not JSON: {err}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a message must be a JSON object with a string `type`")
    return msg


def _turn_text(msg: dict) -> str:
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("empty_text", "a `text` message needs non-empty `text`")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError("text_too_long", f"text longer than {MAX_TEXT_CHARS} characters")
    return text.strip()


async def run_server(stack: Stack, cfg: Config, host: str, port: int, ready=None) -> None:
    """Serve until cancelled (Ctrl-C / SIGTERM); `ready(url)` is called once listening."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max(32, 4 * cfg.server.max_sessions)))
    app = VoiceServer(stack, cfg)
    async with serve(app.handle, host, port, process_request=app.process_request,
                     max_size=SOCKET_LIMIT_FACTOR * cfg.server.max_message_bytes,
                     ping_interval=cfg.server.ping_interval_s, ping_timeout=cfg.server.ping_interval_s) as server:
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
            except (NotImplementedError, RuntimeError):
                pass
        sock_port = next(iter(server.sockets)).getsockname()[1]
        if ready:
            ready(f"http://{host}:{sock_port}/")
        await stop
