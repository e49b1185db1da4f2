"""What a `VoiceSession` puts on its `events` queue, in the order a turn produces them.

`VadState` (`Speech.START`, then `Speech.ENDPOINT`), `Transcript` (partial, then final), `ReplyText` (each
piece of reply text as the reply policy releases it), `AudioStart` then `AudioOut` (reply
audio), `TurnEnd` (the turn's metrics) or `TurnFailed`. `dispatch` calls the handler named
after the event's kind, so every consumer (server, talk, bench, hesitation) reads one table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable

from voice.tts import AudioChunk
from voice.turns import TurnMetrics


class Speech(StrEnum):
    """What the listening side tells the client: the user began, or the turn-taker decided they finished."""

    START = "speech_start"  # an utterance began (a barge-in when a reply plays)
    ENDPOINT = "endpoint"  # the user's turn ended (the last voiced audio before it: TurnMetrics.speech_end)


@dataclass(frozen=True)
class VadState:
    state: Speech
    t: float


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool
    t: float


@dataclass(frozen=True)
class ReplyText:
    text: str
    t: float


@dataclass(frozen=True)
class AudioStart:
    rate_hz: int
    t: float


@dataclass(frozen=True)
class AudioOut:
    chunk: AudioChunk


@dataclass(frozen=True)
class TurnEnd:
    metrics: TurnMetrics


@dataclass(frozen=True)
class TurnFailed:
    code: str
    message: str


SessionEvent = VadState | Transcript | ReplyText | AudioStart | AudioOut | TurnEnd | TurnFailed


def dispatch(event: SessionEvent, handlers: dict[type, Callable[[Any], Any]]) -> Any:
    """`handlers[type(event)](event)`; None for an event type without a handler."""
    handler = handlers.get(type(event))
    return handler(event) if handler is not None else None


def log_line(event: str, **fields: Any) -> str:
    """One grep-able log line, `event=NAME key=value …` (None fields left out; floats to 0.1; text
    with spaces, quotes or '=' JSON-quoted), e.g. `event=turn_end session=s1 turn=2 gap_ms=812.4`."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        else:
            text = f"{value:.1f}" if isinstance(value, float) else str(value)
        if not text or any(c.isspace() or c in '"=' for c in text):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)
