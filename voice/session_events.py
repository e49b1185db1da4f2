"""What a `VoiceSession` puts on its `events` queue, in the order a turn produces them.

`VadState` (speech_start/speech_end), `Transcript` (partial, then final), `ReplyText` (each
piece of reply text as the reply policy releases it), `AudioStart` then `AudioOut` (reply
audio), `TurnEnd` (the turn's metrics) or `TurnError`. `dispatch` calls the handler named
after the event's kind, so every consumer (server, talk, bench, hesitation) reads one table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from voice.tts import AudioChunk
from voice.turns import TurnMetrics


@dataclass(frozen=True)
class VadState:
    state: str  # speech_start | speech_end
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
class TurnError:
    code: str
    message: str


SessionEvent = VadState | Transcript | ReplyText | AudioStart | AudioOut | TurnEnd | TurnError


def dispatch(event: SessionEvent, handlers: dict[type, Callable[[Any], Any]]) -> Any:
    """`handlers[type(event)](event)`; None for an event type without a handler."""
    handler = handlers.get(type(event))
    return handler(event) if handler is not None else None
