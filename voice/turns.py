"""Conversation state and per-turn metrics.

In: finished turns (user text, assistant text). Out: the chat messages for the next
prompt, trimmed from the oldest turn so the prompt stays within a token budget; and
`TurnMetrics`, the timestamps of one turn and the figures derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Conversation:
    """User/assistant history with a token budget (oldest turns dropped first)."""

    count_tokens: object  # callable(list[dict]) -> int
    budget_tokens: int = 1024
    turns: list[tuple[str, str]] = field(default_factory=list)
    shortened: bool = False  # the last answer was cut short by the reply policy: it can be continued

    def _history(self) -> list[dict[str, str]]:
        return [m for u, a in self.turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]

    def messages(self, user_text: str) -> list[dict[str, str]]:
        """History plus the new user message, within the budget."""
        while True:
            msgs = self._history() + [{"role": "user", "content": user_text}]
            if not self.turns or self.count_tokens(msgs) <= self.budget_tokens:
                return msgs
            self.turns.pop(0)

    def continuation(self) -> list[dict[str, str]]:
        """The history ending in the last (shortened) answer, for the model to continue it; within
        the budget, the last turn always kept."""
        while len(self.turns) > 1 and self.count_tokens(self._history()) > self.budget_tokens:
            self.turns.pop(0)
        return self._history()

    def add(self, user_text: str, reply_text: str, shortened: bool = False) -> None:
        """Record a finished (or interrupted) turn."""
        self.turns.append((user_text, reply_text))
        self.shortened = shortened

    def extend_last(self, more_text: str, shortened: bool = False) -> None:
        """Append a continuation ("tell me more") to the last answer: the history reads as one answer."""
        if not self.turns:
            raise ValueError("no answer to continue")
        user, answer = self.turns[-1]
        self.turns[-1] = (user, answer + more_text)
        self.shortened = shortened


@dataclass(frozen=True)
class TurnMetrics:
    """Timestamps (perf_counter seconds; 0 = did not happen) and figures of one turn."""

    speech_end: float = 0.0  # last voiced audio (VAD)
    endpoint: float = 0.0  # the endpointer decided the user finished
    asr_final: float = 0.0  # final transcript ready
    llm_start: float = 0.0
    first_span: float = 0.0
    first_audio: float = 0.0  # first reply audio released to the sink
    last_audio: float = 0.0
    tokens: int = 0
    acceptance: float = 0.0
    mean_draft_len: float = 0.0
    interrupted: bool = False
    reply_end: str = ""  # done (the model's end) | budget (soft budget, at a sentence close) | cap (hard cap)
    shortened: bool = False  # the reply policy ended it before the model did: "tell me more" continues it
    continued: bool = False  # it continues the previous answer ("tell me more")
    reply_tokens: int = 0  # tokens of the spoken reply
    reply_sentences: int = 0
    reply_audio_s: float = 0.0  # reply audio sent
    dropped: str = ""  # an unfinished sentence cut by the hard cap, never spoken
    predictive: bool = False  # the reply was prepared before the endpoint
    prediction: str = ""  # released | late | dropped | none (`voice.reply_flow.Prediction`)
    prediction_started: float = 0.0  # the released reply was started
    prediction_audio: float = 0.0  # its first audio was made (held until the endpoint if before it)
    end_of_turn_prob: float | None = None  # the final words' semantic end-of-turn score
    transcript: str = ""
    reply: str = ""

    def _since_speech_end(self, t: float) -> float | None:
        return round((t - self.speech_end) * 1e3, 1) if t and self.speech_end else None

    def as_dict(self) -> dict:
        """The protocol's `turn_end` metrics: stage times in ms after speech end."""
        return {
            "turn_gap_ms": self._since_speech_end(self.first_audio),
            "endpoint_ms": self._since_speech_end(self.endpoint),
            "asr_final_ms": self._since_speech_end(self.asr_final),
            "llm_start_ms": self._since_speech_end(self.llm_start),
            # the reply's time to first text (a remote backend's time to first token)
            "llm_ttft_ms": round((self.first_span - self.llm_start) * 1e3, 1)
            if self.first_span and self.llm_start
            else None,
            "first_span_ms": self._since_speech_end(self.first_span),
            "first_audio_ms": self._since_speech_end(self.first_audio),
            "last_audio_ms": self._since_speech_end(self.last_audio),
            "acceptance": round(self.acceptance, 3),
            "mean_draft_len": round(self.mean_draft_len, 2),
            "tokens": self.tokens,
            "interrupted": self.interrupted,
            "reply_end": self.reply_end,
            "shortened": self.shortened,
            "continued": self.continued,
            "reply_tokens": self.reply_tokens,
            "reply_sentences": self.reply_sentences,
            "reply_audio_s": self.reply_audio_s,
            "dropped_words": len(self.dropped.split()),
            "predictive": self.predictive,
            "prediction": self.prediction,
            "prediction_started_ms": self._since_speech_end(self.prediction_started),
            "prediction_audio_ready_ms": self._since_speech_end(self.prediction_audio),
            "end_of_turn_prob": None if self.end_of_turn_prob is None else round(self.end_of_turn_prob, 4),
        }
