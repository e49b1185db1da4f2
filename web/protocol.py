"""The protocol of web/PROTOCOL.md both ways: one vocabulary of events, encoded and decoded here.

In (server): websocket messages as received (text or binary). Out: a checked dict, a turn's
text, or 16 kHz mono float32 samples; a `ProtocolError` with the protocol's error code for
anything the protocol does not allow (the server sends it as an `error` event and the session
goes on). Costs a resample per audio frame when the client's rate is not 16 kHz.
The server → client direction is one vocabulary: a session's events (`voice.session_events`)
plus `Ready` and `ErrorReport`. `encode` turns one into the message the client gets (JSON
text, or binary PCM for reply audio); a client's `Decoder` turns the message back into the
same event, so a client (talk, soak, bench) reads a server exactly as it reads an in-process
session. Message types are `MessageType`; `ends_turn` says which events close a turn.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import soxr

from audio.frames import SAMPLE_RATE_HZ
from voice.errors import VoiceError
from voice.session_events import (
    AudioOut,
    AudioStart,
    ReplyText,
    SessionEvent,
    Speech,
    Transcript,
    TurnEnd,
    TurnFailed,
    VadState,
    dispatch,
)
from voice.tts import AudioChunk

MAX_TEXT_CHARS = 2000
FORMATS = {"pcm_s16le": 2, "pcm_f32le": 4}


class ProtocolError(VoiceError, ValueError):
    """A client message the protocol does not allow; `code` goes into the error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
        self.resampler = (
            None if rate == SAMPLE_RATE_HZ else soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, dtype="float32")
        )

    def decode(self, data: bytes) -> np.ndarray:
        """PCM bytes → 16 kHz mono float32; raises ProtocolError for malformed frames."""
        if not data:
            raise ProtocolError("empty_frame", "empty audio frame")
        if len(data) > self.max_frame_bytes:
            raise ProtocolError("frame_too_large", f"audio frame of {len(data)} bytes exceeds {self.max_frame_bytes}")
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


def parse_message(message: str) -> dict:
    """A text message as a dict with a string `type`."""
    try:
        msg = json.loads(message)
    except json.JSONDecodeError as err:
        raise ProtocolError("bad_json", f"message is not JSON: {err}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a message must be a JSON object with a string `type`")
    return msg


def turn_text(msg: dict) -> str:
    """The stripped text of a `text` turn, 1–2000 characters."""
    text = msg.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("empty_text", "a `text` message needs non-empty `text`")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError("text_too_long", f"text longer than {MAX_TEXT_CHARS} characters")
    return text.strip()


class MessageType(StrEnum):
    """The `type` of a protocol message (web/PROTOCOL.md)."""

    START = "start"  # client -> server
    TEXT = "text"
    INTERRUPT = "interrupt"
    STOP = "stop"
    READY = "ready"  # server -> client
    VAD = "vad"
    TRANSCRIPT = "transcript"
    REPLY = "reply"
    AUDIO_START = "audio_start"
    TURN_END = "turn_end"
    ERROR = "error"


TURN_FAILURES = ("asr_failed", "turn_failed")  # the `error` codes of a `TurnFailed`


@dataclass(frozen=True)
class Ready:
    """The session started: its id, the reply audio's rate and the active configuration."""

    session: str
    output_sample_rate: int
    config: dict


@dataclass(frozen=True)
class ErrorReport:
    """An `error` that is not a failed turn: a client message refused, the server full, the session
    idle or broken (the codes of web/PROTOCOL.md other than `TURN_FAILURES`)."""

    code: str
    message: str


@dataclass(frozen=True)
class ReportedMetrics:
    """A turn's metrics as a client receives them in `turn_end`. `as_dict()` is the message's
    `metrics` (ms after the server's end of speech); in process a `TurnEnd` carries
    `voice.turns.TurnMetrics` instead, which answers the same `as_dict()`, `transcript`, `reply`."""

    figures: dict
    transcript: str
    reply: str

    def as_dict(self) -> dict:
        """The `metrics` object of the `turn_end` message."""
        return self.figures


ServerEvent = Ready | SessionEvent | ErrorReport

_FIELDS = {
    Ready: lambda e: {
        "type": MessageType.READY,
        "session": e.session,
        "output_sample_rate": e.output_sample_rate,
        "config": e.config,
    },
    VadState: lambda e: {"type": MessageType.VAD, "state": e.state},
    Transcript: lambda e: {"type": MessageType.TRANSCRIPT, "final": e.final, "text": e.text},
    ReplyText: lambda e: {"type": MessageType.REPLY, "text": e.text},
    AudioStart: lambda e: {"type": MessageType.AUDIO_START, "sample_rate": e.rate_hz},
    TurnEnd: lambda e: {
        "type": MessageType.TURN_END,
        "metrics": e.metrics.as_dict(),
        "transcript": e.metrics.transcript,
        "reply": e.metrics.reply,
    },
    TurnFailed: lambda e: {"type": MessageType.ERROR, "code": e.code, "message": e.message},
    ErrorReport: lambda e: {"type": MessageType.ERROR, "code": e.code, "message": e.message},
}


def encode(event: ServerEvent) -> str | bytes:
    """An event as the message the client gets: reply audio as binary PCM s16le, the rest as JSON text."""
    if isinstance(event, AudioOut):
        return event.chunk.samples.astype("<i2").tobytes()
    fields = dispatch(event, _FIELDS)
    if fields is None:
        raise TypeError(f"unknown event {event!r}")
    return json.dumps(fields)


def ends_turn(event: ServerEvent) -> bool:
    """The event closes the user's turn: its `turn_end`, its failure, or a final transcript with
    no words (the sound was not speech: no reply follows)."""
    if isinstance(event, Transcript):
        return event.final and not event.text
    return isinstance(event, (TurnEnd, TurnFailed))


class Decoder:
    """A client's reading of one session's messages: each back into the event the server encoded.

    Events are stamped with the time the client decoded them (`t`, perf_counter); reply audio
    comes as `AudioOut` at the rate of the last `audio_start` (or `ready`). A message type this
    client does not know decodes to None (a newer server may send more; skip it).
    """

    def __init__(self) -> None:
        self.rate_hz = 0

    def decode(self, message: str | bytes) -> ServerEvent | None:
        """One received message as its event; `ProtocolError` when it is not a protocol message."""
        t = time.perf_counter()
        if isinstance(message, bytes):
            return AudioOut(AudioChunk(np.frombuffer(message, dtype="<i2"), self.rate_hz, t))
        msg = parse_message(message)
        try:
            kind = MessageType(msg["type"])
        except ValueError:
            return None
        try:
            return self._event(kind, msg, t)
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError("bad_message", f"a {kind} message without what it needs: {err!r}") from None

    def _event(self, kind: MessageType, msg: dict, t: float) -> ServerEvent | None:
        if kind is MessageType.READY:
            self.rate_hz = int(msg["output_sample_rate"])
            return Ready(msg["session"], self.rate_hz, msg.get("config") or {})
        if kind is MessageType.VAD:
            return VadState(Speech(msg["state"]), t)
        if kind is MessageType.TRANSCRIPT:
            return Transcript(msg["text"], bool(msg["final"]), t)
        if kind is MessageType.REPLY:
            return ReplyText(msg["text"], t)
        if kind is MessageType.AUDIO_START:
            self.rate_hz = int(msg["sample_rate"])
            return AudioStart(self.rate_hz, t)
        if kind is MessageType.TURN_END:
            return TurnEnd(ReportedMetrics(dict(msg["metrics"]), msg.get("transcript", ""), msg.get("reply", "")))
        if kind is MessageType.ERROR:
            failed = TurnFailed if msg["code"] in TURN_FAILURES else ErrorReport
            return failed(msg["code"], msg["message"])
        return None  # a client -> server type: not for a client
