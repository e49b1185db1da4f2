"""One reply in flight inside a `VoiceSession`: its flags, output gate, pacing and metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

from voice.config import Config
from voice.reply_policy import ReplyBudget, ReplyShaper
from voice.turns import TurnMetrics


class EitherSet:
    """Set while any of its events is: the decoder ends a reply on a barge-in (`cancel`) or once
    the reply policy has what it will speak (`finish`)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


class ReplyTurn:
    """One reply in flight: its cancel flag, output gate and timestamps."""

    def __init__(self, reply_id: int, text: str, budget: ReplyBudget, continued: bool = False) -> None:
        self.id, self.text = reply_id, text
        self.created = time.perf_counter()
        self.cancel = threading.Event()
        self.finish = threading.Event()  # the reply policy ended the reply: decoding stops, output goes on
        self.shaper = ReplyShaper(budget)  # what of the decoded text is spoken
        self.continued = continued  # "tell me more": it continues the previous reply
        self.remembered = False  # its reply is in the conversation history
        self.gate = asyncio.Event()  # set at the endpoint: output may flow
        self.released = threading.Event()  # the same, or cancelled: for the decode thread
        self.first_phrase = threading.Event()  # the first phrase went to TTS
        self.m = TurnMetrics(transcript=text, continued=continued)
        self.task: asyncio.Task | None = None
        self.out: asyncio.Queue = asyncio.Queue()  # events held until the gate opens
        self.reply_text = ""
        self.audio_s = 0.0  # reply audio sent to the client

    def ahead_s(self) -> float:
        """Seconds of reply audio sent and not yet played (playback counted from the first audio)."""
        return self.audio_s - (time.perf_counter() - self.m.first_audio) if self.m.first_audio else 0.0

    def waits(self, max_ahead_s: float) -> bool:
        """Whether its decoding waits: held (first phrase made, endpoint not yet confirmed), or
        `max_ahead_s` of its audio not yet played (it resumes as playback catches up)."""
        if self.cancel.is_set() or self.finish.is_set():
            return False  # the scheduler ends it at its next step and frees its slot
        return (self.first_phrase.is_set() and not self.released.is_set()) or self.ahead_s() >= max_ahead_s

    def stamp(self, **fields) -> None:
        self.m = replace(self.m, **fields)


def reply_budget(cfg: Config) -> ReplyBudget:
    """The soft budget from the `reply` section."""
    return ReplyBudget(cfg.reply.soft_tokens, cfg.reply.soft_sentences)
