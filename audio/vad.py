"""Voice activity: silero VAD on 512-sample windows, and the endpointing rule.

In: 32 ms windows at 16 kHz. Out: a speech probability per window (silero, ONNX, one small
forward per window) and, from `Endpointer`, events (`VadKind`): `speech_start`,
`first_silence` (the first quiet window after speech — start the final ASR decode now),
`speech_resumed` (the user went on after a short pause), and `silence_limit` (silence lasted
`end_silence_ms`, the longest any turn waits). The end of speech itself is a time, not an
event: the last voiced window (`VadEvent.speech_end_t`); the endpoint is decided above this
layer (`voice.turntaking`). `Endpointer` is pure: no model, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

WINDOW = 512
WINDOW_MS = 1000 * WINDOW / 16000  # 32 ms


class SileroVAD:
    """One stream's silero VAD (the model keeps per-stream state)."""

    def __init__(self, sample_rate_hz: int = 16000) -> None:
        import torch

        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # its first import sets torch's threads to 1, process-wide

        torch.set_num_threads(threads)  # the LLM's `llm.threads` stays what the stack chose
        self._torch = torch
        self.model = load_silero_vad(onnx=True)
        self.rate = sample_rate_hz

    def prob(self, window: np.ndarray) -> float:
        """Speech probability of one 512-sample window."""
        return float(
            self.model(self._torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32)), self.rate).item()
        )

    def reset(self) -> None:
        """Forget the stream state."""
        self.model.reset_states()


class VadKind(StrEnum):
    """What one window told the `Endpointer`."""

    SPEECH_START = "speech_start"  # voiced for min_speech_ms: an utterance began
    FIRST_SILENCE = "first_silence"  # the first quiet window after speech
    SPEECH_RESUMED = "speech_resumed"  # voiced again after a pause shorter than the limit
    SILENCE_LIMIT = "silence_limit"  # quiet for end_silence_ms: the longest silence any turn waits


@dataclass(frozen=True)
class VadEvent:
    """What a window told the endpointer; `t` is the time of that window."""

    kind: VadKind
    t: float
    speech_end_t: float = 0.0  # time of the last voiced window (for first_silence/silence_limit)


@dataclass
class Endpointer:
    """Hysteresis over per-window speech probabilities."""

    threshold: float = 0.5
    end_silence_ms: int = 300
    min_speech_ms: int = 150
    window_ms: float = WINDOW_MS
    hysteresis: float = 0.15
    in_speech: bool = False
    _voiced_ms: float = 0.0
    _silence_ms: float = 0.0
    _last_voiced_t: float = 0.0

    def reset(self) -> None:
        """Out of speech, counters cleared: the next voiced run starts a new utterance."""
        self.in_speech = False
        self._voiced_ms = self._silence_ms = 0.0

    def update(self, prob: float, t: float) -> list[VadEvent]:
        """Feed one window's probability; return the events it triggers."""
        voiced = prob >= self.threshold
        # leave speech only below a lower threshold, so a soft syllable does not end it
        if self.in_speech and prob >= self.threshold - self.hysteresis:
            voiced = True
        events: list[VadEvent] = []
        if voiced:
            self._voiced_ms += self.window_ms
            if not self.in_speech and self._voiced_ms >= self.min_speech_ms:
                self.in_speech = True
                events.append(VadEvent(VadKind.SPEECH_START, t))
            elif self.in_speech and self._silence_ms > 0:
                events.append(VadEvent(VadKind.SPEECH_RESUMED, t))
            self._silence_ms = 0.0
            self._last_voiced_t = t
            return events
        if not self.in_speech:
            self._voiced_ms = 0.0
            return events
        self._silence_ms += self.window_ms
        if self._silence_ms == self.window_ms:
            events.append(VadEvent(VadKind.FIRST_SILENCE, t, self._last_voiced_t))
        if self._silence_ms >= self.end_silence_ms:
            events.append(VadEvent(VadKind.SILENCE_LIMIT, t, self._last_voiced_t))
            self.reset()
        return events
