"""The protocol of web/PROTOCOL.md both ways: client messages checked, session events as messages.

In: websocket messages as received (text or binary). Out: a checked dict, a turn's text, or
16 kHz mono float32 samples; a `ProtocolError` with the protocol's error code for anything the
protocol does not allow (the server sends it as an `error` event and the session goes on).
Costs a resample per audio frame when the client's rate is not 16 kHz. The other way,
`event_message` turns a pipeline event into the JSON message (or binary PCM) the client gets.
"""

from __future__ import annotations

import json

import numpy as np
import soxr

from audio.frames import SAMPLE_RATE_HZ
from voice.errors import VoiceError
from voice.session_events import AudioOut, AudioStart, ReplyText, Transcript, TurnEnd, TurnFailed, VadState, dispatch

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


_MESSAGES = {
    VadState: lambda e: {"type": "vad", "state": e.state},
    Transcript: lambda e: {"type": "transcript", "final": e.final, "text": e.text},
    ReplyText: lambda e: {"type": "reply", "text": e.text},
    AudioStart: lambda e: {"type": "audio_start", "sample_rate": e.rate_hz},
    TurnEnd: lambda e: {
        "type": "turn_end",
        "metrics": e.metrics.as_dict(),
        "transcript": e.metrics.transcript,
        "reply": e.metrics.reply,
    },
    TurnFailed: lambda e: {"type": "error", "code": e.code, "message": e.message},
    AudioOut: lambda e: e.chunk.samples.astype("<i2").tobytes(),
}


def event_message(event) -> dict | bytes:
    """A pipeline event as a protocol message: reply audio as binary PCM, the rest as a JSON-able dict."""
    msg = dispatch(event, _MESSAGES)
    if msg is None:
        raise TypeError(f"unknown event {event!r}")
    return msg
