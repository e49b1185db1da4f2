"""One reply's lifecycle, pure: prepare → hold → release | drop | stop, then done.

In: timestamped inputs — from the turn-taker's decisions (`Release`, `Drop`, `Stop`) and from
the reply's own stages (`FirstPhrase` went to TTS, `AudioMade`, `PolicyDone`: the reply policy
has what it will speak, `OutputMade`: decoding and synthesis ended, `Forwarded`: all of it
reached the user). Out: actions for the session (`OpenGate`, `EndDecode`, `Cancel`, `Finish`)
and the reply's standing for the decode scheduler as data (`urgent`, `held`). No clock, no
I/O, no model: tests drive it with scripted timelines. Costs microseconds per input.

The rules:
- A reply prepares (decodes urgently) until its first phrase goes to TTS; unreleased, it is
  then held: its decoding waits for the endpoint, leaving the cores to the final transcript.
- `Release` opens its output to the user and says how the prediction went: `released` (made
  before the endpoint, its first audio ready then), `late` (made before, audio not ready),
  `dropped` (started at the endpoint after a prediction on other words was dropped), `none`.
- `Drop` ends an unreleased reply unheard; `Stop` ends any reply, reported if it was heard.
- `PolicyDone` ends decoding while its output goes on; `Finish` once a released reply's
  output has all been forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Stage(Enum):
    """Where a reply is in its life."""

    PREPARING = "preparing"  # decoding towards its first phrase
    HELD = "held"  # first phrase made; output held until the endpoint
    RELEASED = "released"  # output flowing to the user
    DROPPED = "dropped"  # ended unheard
    STOPPED = "stopped"  # ended while the user heard it (barge-in, client interrupt)
    DONE = "done"  # all of its output reached the user


class Prediction(Enum):
    """How a released reply's prediction went (see the module docstring)."""

    RELEASED = "released"
    LATE = "late"
    DROPPED = "dropped"
    NONE = "none"


# ---- inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FirstPhrase:
    """Its first phrase went to TTS."""

    t: float


@dataclass(frozen=True)
class AudioMade:
    """TTS made a chunk of its audio (held or not)."""

    t: float


@dataclass(frozen=True)
class Release:
    """The endpoint confirmed its words at `t`; `dropped`: why an earlier prediction of this
    utterance was dropped ("" if none was)."""

    t: float
    dropped: str = ""


@dataclass(frozen=True)
class Drop:
    """The words changed (or look unfinished): throw it away unheard."""

    reason: str


@dataclass(frozen=True)
class Stop:
    """Stop it now (barge-in, typed turn, client interrupt, session closed)."""

    reason: str


@dataclass(frozen=True)
class PolicyDone:
    """The reply policy has what it will speak: decoding ends, output goes on."""


@dataclass(frozen=True)
class OutputMade:
    """Decoding and synthesis ended: every event it will send is queued."""


@dataclass(frozen=True)
class Forwarded:
    """Every queued event reached the user."""


ReplyInput = FirstPhrase | AudioMade | Release | Drop | Stop | PolicyDone | OutputMade | Forwarded


# ---- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenGate:
    """Let its output reach the user; `prediction` says how the prediction went."""

    prediction: Prediction


@dataclass(frozen=True)
class EndDecode:
    """Stop decoding at the next verify step; output already made goes on."""


@dataclass(frozen=True)
class Cancel:
    """Stop decoding and drop unsent output; `heard`: the user heard part of it (report it)."""

    reason: str
    heard: bool


@dataclass(frozen=True)
class Finish:
    """All of it reached the user: remember it, the turn is over."""


ReplyAction = OpenGate | EndDecode | Cancel | Finish

_LIVE = (Stage.PREPARING, Stage.HELD, Stage.RELEASED)


@dataclass
class ReplyFlow:
    """The reply state machine: `step(input) -> [actions]`; `urgent` and `held` for the scheduler."""

    created_t: float
    stage: Stage = Stage.PREPARING
    first_phrase_t: float | None = None
    audio_made_t: float | None = None
    decoding: bool = True
    output_made: bool = False
    prediction: Prediction | None = None

    @property
    def urgent(self) -> bool:
        """Decoding towards a first phrase the user may be waiting for."""
        return self.decoding and self.first_phrase_t is None and self.stage in _LIVE

    @property
    def may_hold(self) -> bool:
        """Decoding a prepared reply's first phrase: the span that completes it holds the reply."""
        return self.decoding and self.stage is Stage.PREPARING

    @property
    def held(self) -> bool:
        """Its decoding waits for the endpoint."""
        return self.decoding and self.stage is Stage.HELD

    @property
    def live(self) -> bool:
        """Neither ended nor done."""
        return self.stage in _LIVE

    def step(self, event: ReplyInput) -> list[ReplyAction]:
        """Feed one input; return the actions it calls for, in order."""
        handler = {
            FirstPhrase: self._first_phrase,
            AudioMade: self._audio_made,
            Release: self._release,
            Drop: self._drop,
            Stop: self._stop,
            PolicyDone: self._policy_done,
            OutputMade: self._output_made,
            Forwarded: self._forwarded,
        }.get(type(event))
        if handler is None:
            raise TypeError(f"ReplyFlow cannot take {type(event).__name__}")
        return handler(event)

    def _first_phrase(self, e: FirstPhrase) -> list[ReplyAction]:
        if self.first_phrase_t is None:
            self.first_phrase_t = e.t
        if self.stage is Stage.PREPARING:
            self.stage = Stage.HELD
        return []

    def _audio_made(self, e: AudioMade) -> list[ReplyAction]:
        if self.audio_made_t is None:
            self.audio_made_t = e.t
        return []

    def _release(self, e: Release) -> list[ReplyAction]:
        if self.stage not in (Stage.PREPARING, Stage.HELD):
            return []
        self.stage = Stage.RELEASED
        if self.created_t < e.t:  # prepared before the endpoint
            ready = self.audio_made_t is not None and self.audio_made_t <= e.t
            self.prediction = Prediction.RELEASED if ready else Prediction.LATE
        else:
            self.prediction = Prediction.DROPPED if e.dropped else Prediction.NONE
        return [OpenGate(self.prediction)]

    def _drop(self, e: Drop) -> list[ReplyAction]:
        if self.stage not in (Stage.PREPARING, Stage.HELD):
            return []  # a released reply is stopped, not dropped
        self.stage, self.decoding = Stage.DROPPED, False
        return [Cancel(e.reason, heard=False)]

    def _stop(self, e: Stop) -> list[ReplyAction]:
        if self.stage not in _LIVE:
            return []
        heard = self.stage is Stage.RELEASED
        self.stage, self.decoding = (Stage.STOPPED if heard else Stage.DROPPED), False
        return [Cancel(e.reason, heard)]

    def _policy_done(self, _: PolicyDone) -> list[ReplyAction]:
        if not (self.decoding and self.live):
            return []
        self.decoding = False
        return [EndDecode()]

    def _output_made(self, _: OutputMade) -> list[ReplyAction]:
        self.output_made, self.decoding = True, False
        return []

    def _forwarded(self, _: Forwarded) -> list[ReplyAction]:
        if self.stage is not Stage.RELEASED:
            return []
        self.stage = Stage.DONE
        return [Finish()]
