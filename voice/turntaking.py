"""Turn-taking: when the user's turn ends, and the reply prepared before it does. Pure.

In: timestamped inputs — one per 32 ms VAD window (`Window`), ASR hypotheses with the audio
extent they cover (`Hypothesis`), semantic end-of-turn scores (`Score`), reply progress
(`ReplyDone`) and client actions (`TypedText`, `ClientInterrupt`). Out: action values for the
session to carry out (`Transcribe`, `ScoreText`, `StartReply`, `DropReply`, `ReleaseReply`,
`StopReply`, `SpeechStarted`, `Endpoint`), all declared in `voice/turnevents.py`. No model,
no clock, no I/O: tests drive it with scripted timelines. Costs microseconds per window.

The rules:
- While the user speaks, the utterance is re-transcribed every `asr.interval_ms`, one decode
  at a time, and never more often than keeps partial decodes within `asr.partial_load` of
  the time (a slow CPU stays free for the final decode); each hypothesis is scored by the LLM.
- Predictive reply: a hypothesis that may be complete (score above `turn.eot_low`) gets a
  reply at once, held back (it stops after its first phrase until released); a later
  hypothesis with other words drops it (and may start another). While the user speaks, words
  scored at or below `turn.eot_low` get no reply; once the user is silent, the final
  transcript gets a held reply whatever its score: a low score makes the turn wait longer
  with idle cores, and the reply is ready when it ends on those words.
- Final transcript: once the user is silent, a decode at the first quiet window is final if it
  repeats the previous hypothesis word for word; otherwise one whose audio reaches
  `asr.final_tail_ms` past the last voiced window is. Audio already covered is never re-decoded.
- Endpoint: silence >= required_silence_ms(score of the final transcript); the reply built on
  the final transcript's words is released, any other is dropped and one is started. A final
  transcript whose decode looped ("Who painted her? Who painted her?", collapsed to one copy)
  waits `turn.max_silence_ms`: an invented ending never shortens the wait.
- Speech while a released reply plays is a barge-in (`StopReply`), unless `echo` says the
  speech is our own reply through a speaker.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from audio.vad import WINDOW_MS, Endpointer, VadKind
from voice.turnevents import (
    Action,
    ClientInterrupt,
    DropReply,
    Endpoint,
    Hypothesis,
    ReleaseReply,
    ReplyDone,
    Score,
    ScoreText,
    SpeechStarted,
    StartReply,
    StopReply,
    Transcribe,
    TypedText,
    Window,
)


# ---- pure rules ------------------------------------------------------------------------
def required_silence_ms(prob: float | None, min_ms: float, max_ms: float, low: float, high: float) -> float:
    """Silence that ends a turn whose words score `prob`.

    s(p) = max_ms for p <= low (or unknown), min_ms for p >= high, and between them linear in
    log p (the scores span orders of magnitude):
    s(p) = max_ms - (max_ms - min_ms) * ln(p / low) / ln(high / low).
    """
    if prob is None or prob <= low:
        return max_ms
    if prob >= high:
        return min_ms
    return max_ms - (max_ms - min_ms) * math.log(prob / low) / math.log(high / low)


def same_words(a: str, b: str) -> bool:
    """Equal after lower-casing and dropping punctuation ("France?" == "france")."""
    return normalise(a) == normalise(b)


def normalise(text: str) -> str:
    """Lower-case words without punctuation, single-spaced."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@dataclass(frozen=True)
class TurnSettings:
    """The tunables the machine reads (from `asr`, `vad` and `turn` config)."""

    threshold: float = 0.5
    hysteresis: float = 0.15
    min_speech_ms: int = 150
    interval_ms: int = 250
    partial_load: float = 1.0
    final_tail_ms: int = 64
    min_silence_ms: int = 200
    max_silence_ms: int = 1200
    eot_low: float = 0.005
    eot_high: float = 0.1
    max_utterance_s: float = 20.0
    predictive: bool = True


@dataclass
class _Utterance:
    """What is known of the utterance in progress."""

    id: int
    start_t: float
    last_voiced_t: float
    silent_since_t: float | None = None  # first quiet window of the current pause
    last_decode_t: float = 0.0  # audio end of the last decode launched
    hypothesis: Hypothesis | None = None
    previous_text: str | None = None
    final: Hypothesis | None = None
    endpoint_due: bool = False  # the silence (or length) limit passed before the final was known


@dataclass
class _Reply:
    id: int
    text: str
    released: bool = False


@dataclass
class TurnTaker:
    """The turn-taking state machine: `step(input) -> [actions]`."""

    settings: TurnSettings = field(default_factory=TurnSettings)

    def __post_init__(self) -> None:
        s = self.settings
        self.endpointer = Endpointer(s.threshold, s.max_silence_ms, s.min_speech_ms, hysteresis=s.hysteresis)
        self.utterance: _Utterance | None = None
        self.reply: _Reply | None = None
        self.scores: dict[str, float] = {}
        self.asr_busy = False
        self.now = 0.0  # the time of the newest window
        self.decode_ms = 0.0  # how long the last decode took (at window resolution)
        self._ids = 0

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def step(self, event: object) -> list[Action]:
        """Feed one input; return the actions it calls for, in order."""
        handler = {
            Window: self._window,
            Hypothesis: self._hypothesis,
            Score: self._score,
            ReplyDone: self._reply_done,
            TypedText: self._typed,
            ClientInterrupt: self._interrupt,
        }.get(type(event))
        if handler is None:
            raise TypeError(f"TurnTaker cannot take {type(event).__name__}")
        return handler(event)

    # ---- windows ----
    def _window(self, w: Window) -> list[Action]:
        self.now = w.t
        actions: list[Action] = []
        for event in self.endpointer.update(w.prob, w.t):
            if event.kind is VadKind.SPEECH_START:
                actions += self._speech_start(w)
            elif self.utterance is None:
                continue
            elif event.kind is VadKind.FIRST_SILENCE:
                self.utterance.last_voiced_t = event.speech_end_t
                self.utterance.silent_since_t = event.t
            elif event.kind is VadKind.SPEECH_RESUMED:
                actions += self._resumed()
            elif event.kind is VadKind.SILENCE_LIMIT:  # the longest silence any turn waits
                self.utterance.endpoint_due = True
        if self.utterance is not None:
            if self.utterance.silent_since_t is None:
                self.utterance.last_voiced_t = w.t
            actions += self._tick(w.t)
        return actions

    def _speech_start(self, w: Window) -> list[Action]:
        if w.echo:  # our own reply through the speaker
            self.endpointer.reset()
            return []
        actions = self._stop_reply("barge_in")
        self.utterance = _Utterance(self._next_id(), w.t, w.t, last_decode_t=w.t)
        return actions + [SpeechStarted(self.utterance.id, w.t)]

    def _resumed(self) -> list[Action]:
        u = self.utterance
        u.silent_since_t, u.final, u.endpoint_due = None, None, False
        return self._drop_held("speech resumed")

    def _tick(self, t: float) -> list[Action]:
        u, s = self.utterance, self.settings
        if t - u.start_t >= s.max_utterance_s:  # long speech becomes several turns
            u.endpoint_due = True
            u.silent_since_t = u.silent_since_t or t
        if u.silent_since_t is None:
            gap_ms = max(s.interval_ms, self.decode_ms / s.partial_load)
            if not self.asr_busy and (t - u.last_decode_t) * 1e3 >= gap_ms:
                return self._transcribe(t)
            return []
        if u.final is None:
            if self.asr_busy or u.last_decode_t >= u.last_voiced_t + s.final_tail_ms / 1e3:
                return []  # the decode in flight (or its answer, on its way) covers the pause
            if u.last_decode_t < u.last_voiced_t:
                return self._transcribe(t, quiet=True)  # at the first quiet window: final if it repeats the last words
            if (t - u.last_voiced_t) * 1e3 < s.final_tail_ms + WINDOW_MS and not u.endpoint_due:
                return []
            return self._transcribe(t, quiet=True)  # with the tail: soft word endings ("France") are in
        silence_ms = (t - u.last_voiced_t) * 1e3
        if u.endpoint_due or silence_ms >= self._required_ms(u.final):
            return self._endpoint(t)
        return []

    def _transcribe(self, t: float, quiet: bool = False) -> list[Action]:
        self.asr_busy = True
        self.utterance.last_decode_t = t
        return [Transcribe(self.utterance.id, t, quiet)]

    def _required_ms(self, final: Hypothesis) -> float:
        s = self.settings
        if not final.text.strip():
            return s.min_silence_ms  # nothing said (noise): end it without a reply
        if final.looped:
            return s.max_silence_ms
        prob = self.score_of(final.text)
        return required_silence_ms(prob, s.min_silence_ms, s.max_silence_ms, s.eot_low, s.eot_high)

    def score_of(self, text: str) -> float | None:
        """The score of `text`, or of the latest scored text with the same words."""
        if text in self.scores:
            return self.scores[text]
        alike = [p for scored, p in self.scores.items() if same_words(scored, text)]
        return alike[-1] if alike else None

    # ---- transcripts and scores ----
    def _hypothesis(self, h: Hypothesis) -> list[Action]:
        self.asr_busy = False
        self.decode_ms = max(0.0, (self.now - h.audio_end_t) * 1e3)
        u = self.utterance
        if u is None or h.utterance != u.id:
            return []  # an utterance already ended
        u.previous_text, u.hypothesis = (u.hypothesis.text if u.hypothesis else None), h
        self._maybe_final(h)
        actions: list[Action] = []
        if self.reply is not None and not self.reply.released and not same_words(self.reply.text, h.text):
            actions += self._drop_held("words changed")
        if u.final is not None:
            actions += self._reply_for_final()
        elif (
            h.text.strip()
            and self.reply is None
            and self.score_of(h.text) is None
            and u.silent_since_t is not None
            and self.settings.predictive
        ):
            actions += self._start(h.text)  # the user paused: the reply scores the words itself
        elif h.text.strip() and self.reply is None and self.score_of(h.text) is None:
            actions.append(ScoreText(h.text))
        elif self._worth_predicting(h.text):
            actions += self._start(h.text)
        if u.silent_since_t is not None:  # act now: the audio may have stopped coming
            actions += self._tick(self.now)
        return actions

    def _maybe_final(self, h: Hypothesis) -> None:
        u, s = self.utterance, self.settings
        if u.silent_since_t is None:
            return
        covers_tail = h.audio_end_t >= u.last_voiced_t + s.final_tail_ms / 1e3
        stable = (
            h.audio_end_t >= u.last_voiced_t and u.previous_text is not None and same_words(u.previous_text, h.text)
        )
        if covers_tail or stable or (u.endpoint_due and h.audio_end_t >= u.last_voiced_t):
            u.final = h

    def _reply_for_final(self) -> list[Action]:
        """Once the final words are known: a reply on them, unless they look unfinished."""
        text = self.utterance.final.text
        if not text.strip() or (self.reply is not None and same_words(self.reply.text, text)):
            return []
        if not self.settings.predictive:
            return [ScoreText(text)] if self.score_of(text) is None and self.reply is None else []
        # even words that score plainly unfinished: the turn now waits a longer silence with idle
        # cores, and ends on these words unless the user goes on (which drops the reply)
        return self._start(text)

    def _worth_predicting(self, text: str) -> bool:
        prob = self.score_of(text)
        return (
            self.settings.predictive
            and self.reply is None
            and bool(text.strip())
            and prob is not None
            and prob > self.settings.eot_low
        )

    def _score(self, sc: Score) -> list[Action]:
        self.scores[sc.text] = sc.prob
        u = self.utterance
        if u is not None and u.final is not None:
            return self._tick(self.now)
        if u is None or u.hypothesis is None:
            return []
        if sc.text == u.hypothesis.text and self._worth_predicting(sc.text):
            return self._start(sc.text)
        return []

    # ---- replies ----
    def _start(self, text: str, released: bool = False) -> list[Action]:
        self.reply = _Reply(self._next_id(), text, released)
        return [StartReply(self.reply.id, text, released)]

    def _drop_held(self, reason: str) -> list[Action]:
        if self.reply is None or self.reply.released:
            return []
        reply, self.reply = self.reply, None
        return [DropReply(reply.id, reason)]

    def _stop_reply(self, reason: str) -> list[Action]:
        if self.reply is None:
            return []
        reply, self.reply = self.reply, None
        return [StopReply(reply.id, reason) if reply.released else DropReply(reply.id, reason)]

    def _endpoint(self, t: float) -> list[Action]:
        u = self.utterance
        self.utterance = None
        self.endpointer.reset()
        end = Endpoint(u.id, t, u.last_voiced_t, u.final.audio_end_t, u.final.text)
        if not u.final.text.strip():
            return self._drop_held("no words") + [end]
        actions: list[Action] = []
        if self.reply is None or not same_words(self.reply.text, u.final.text):
            actions += self._drop_held("words changed") + self._start(u.final.text)
        self.reply.released = True
        return actions + [end, ReleaseReply(self.reply.id, end)]

    def _reply_done(self, done: ReplyDone) -> list[Action]:
        if self.reply is not None and self.reply.id == done.reply and self.reply.released:
            self.reply = None
        return []

    def _typed(self, typed: TypedText) -> list[Action]:
        actions = self._stop_reply("typed turn")
        self.utterance = None
        self.endpointer.reset()
        return actions + self._start(typed.text, released=True)

    def _interrupt(self, _: ClientInterrupt) -> list[Action]:
        return self._stop_reply("client interrupt")
