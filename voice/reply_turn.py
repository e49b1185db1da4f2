"""One reply in flight inside a `VoiceSession`: its state machine, output queue, decode standing
and metrics. The decisions are `voice.reply_flow.ReplyFlow`'s; this object carries out the
decode-side one (the scheduler's `Priority`) and hands the rest back: decoding stops when the
task reading the reply stream closes it or is cancelled."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from decode.scheduler import Priority
from voice.config import Config
from voice.reply_flow import ReplyAction, ReplyFlow, ReplyInput, Stage
from voice.reply_policy import ReplyBudget, ReplyShaper
from voice.turns import TurnMetrics


class ReplyTurn:
    """One reply in flight: its flow, output gate, decode standing and timestamps."""

    def __init__(self, reply_id: int, text: str, budget: ReplyBudget, continued: bool = False) -> None:
        self.id, self.text = reply_id, text
        self.flow = ReplyFlow(time.perf_counter())
        self.priority = Priority(may_hold=self.flow.may_hold)  # read by the decode scheduler at each step
        self.shaper = ReplyShaper(budget)  # what of the decoded text is spoken
        self.continued = continued  # "tell me more": it continues the previous reply
        self.remembered = False  # its reply is in the conversation history
        self.gate = asyncio.Event()  # set when its output may reach the user (or it ended)
        self.m = TurnMetrics(transcript=text, continued=continued)
        self.task: asyncio.Task | None = None
        self.out: asyncio.Queue = asyncio.Queue()  # events held until the gate opens
        self.reply_text = ""
        self.audio_s = 0.0  # reply audio sent to the client

    def step(self, event: ReplyInput) -> list[ReplyAction]:
        """Run the flow on `event`; update the decode standing; return the actions."""
        actions = self.flow.step(event)
        p = self.priority
        p.urgent, p.held, p.may_hold = self.flow.urgent, self.flow.held, self.flow.may_hold
        if not self.flow.decoding:
            p.played_until_t = 0.0  # a job to end runs its next step at once and frees its slot
        return actions

    @property
    def ended(self) -> bool:
        """Dropped or stopped: nothing more of it reaches the user."""
        return self.flow.stage in (Stage.DROPPED, Stage.STOPPED)

    def sent_audio(self, seconds: float) -> None:
        """`seconds` more of its audio went to the user (playback counted from the first audio)."""
        self.audio_s += seconds
        if self.flow.decoding:
            self.priority.played_until_t = self.m.first_audio + self.audio_s

    def stamp(self, **fields) -> None:
        self.m = replace(self.m, **fields)


def reply_budget(cfg: Config) -> ReplyBudget:
    """The soft budget from the `reply` section."""
    return ReplyBudget(cfg.reply.soft_tokens, cfg.reply.soft_sentences)
