"""The turn-taker's vocabulary: timestamped inputs and the actions it answers with. Values only.

Inputs: one per 32 ms VAD window (`Window`), ASR hypotheses with the audio extent they cover
(`Hypothesis`), end-of-turn scores (`Score`), reply progress (`ReplyDone`), client actions
(`TypedText`, `ClientInterrupt`). Actions: what the session carries out (`Action`).
"""

from __future__ import annotations

from dataclasses import dataclass


# ---- inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One VAD window: speech probability, arrival time; `echo`: our own reply is audible."""

    t: float
    prob: float
    echo: bool = False


@dataclass(frozen=True)
class Hypothesis:
    """A transcript of utterance `utterance` from its start to the window stamped `audio_end_t`."""

    utterance: int
    text: str
    audio_end_t: float
    looped: bool = False  # the decode looped (retried or collapsed): its ending is no sign the turn ended


@dataclass(frozen=True)
class Score:
    """The semantic end-of-turn probability of `text`."""

    text: str
    prob: float


@dataclass(frozen=True)
class ReplyDone:
    """Reply `reply` produced all its output (or failed)."""

    reply: int


@dataclass(frozen=True)
class TypedText:
    """A typed user turn."""

    text: str
    t: float


@dataclass(frozen=True)
class ClientInterrupt:
    """The client asked to stop the reply."""

    t: float


# ---- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeechStarted:
    """A new utterance began (`t`: the window that confirmed it)."""

    utterance: int
    t: float


@dataclass(frozen=True)
class Transcribe:
    """Decode utterance `utterance` from its start to now; answer with a `Hypothesis`."""

    utterance: int
    audio_end_t: float
    quiet: bool = False  # the user is silent: this decode may be the final transcript (it goes first)


@dataclass(frozen=True)
class ScoreText:
    """Compute the end-of-turn score of `text`; answer with a `Score`."""

    text: str


@dataclass(frozen=True)
class StartReply:
    """Prepare reply `reply` to `text`; its output is held until `ReleaseReply` unless `released`.

    The reply reports the score of `text` (`Score`) before it decodes: that prefill is its own.
    """

    reply: int
    text: str
    released: bool = False


@dataclass(frozen=True)
class DropReply:
    """Throw away held reply `reply` (nothing of it was heard)."""

    reply: int
    reason: str


@dataclass(frozen=True)
class Endpoint:
    """The user's turn ended: `speech_end_t` last voiced window, `t` the decision,
    `final_audio_end_t` the audio extent of the final transcript's decode, `transcript` the
    final words (empty: no reply)."""

    utterance: int
    t: float
    speech_end_t: float
    final_audio_end_t: float
    transcript: str


@dataclass(frozen=True)
class ReleaseReply:
    """Let reply `reply` (built on the final transcript) reach the user."""

    reply: int
    endpoint: Endpoint


@dataclass(frozen=True)
class StopReply:
    """Stop reply `reply`, which the user may have heard (barge-in or the client's interrupt)."""

    reply: int
    reason: str


Action = SpeechStarted | Transcribe | ScoreText | StartReply | DropReply | Endpoint | ReleaseReply | StopReply
