"""Speech recognition on faster-whisper, encoding only the real audio window.

In: 16 kHz mono float32 audio. Out: text. Whisper pads every input to 30 s (3000 mel
frames); CTranslate2 accepts shorter windows, so we encode only the utterance (rounded up,
at least `min_window_frames`): on 2 cores a 2 s utterance costs ~0.1–0.2 s instead of ~1 s.
Audio longer than 30 s falls back to faster-whisper's own segmenting transcribe.

`LocalAgreement` is the streaming commit rule (whisper_streaming's HypothesisBuffer): a
word is committed once two consecutive hypotheses agree on it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
FRAMES_PER_S = 100  # whisper mel frames (10 ms hop)
MAX_FRAMES = 3000


class WhisperASR:
    """A loaded CTranslate2 whisper model with short-window decoding."""

    def __init__(self, model_dir: str, language: str = "en", beam_size: int = 1,
                 compute_type: str = "int8", threads: int = 0, min_window_frames: int = 600,
                 pad_frames: int = 300) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.model = WhisperModel(model_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                   task="transcribe", language=language)
        self.language, self.beam_size = language, beam_size
        self.min_window_frames, self.pad_frames = min_window_frames, pad_frames
        self._prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]

    def transcribe(self, audio: np.ndarray) -> str:
        """Text of one utterance (16 kHz float32)."""
        if audio.size == 0:
            return ""
        if audio.size > SAMPLE_RATE_HZ * MAX_FRAMES // FRAMES_PER_S:
            segments, _ = self.model.transcribe(audio, language=self.language, beam_size=self.beam_size)
            return " ".join(s.text.strip() for s in segments).strip()
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_ctranslate2_storage

        features = self.model.feature_extractor(audio)
        # Silence after the speech (pad_frames, at least min_window_frames) keeps whisper from
        # repeating itself or dropping the last word: measured on the bench questions, +50
        # frames repeated sentences, +300 (min 600) matched whole-file decoding but for 2 words.
        frames = features.shape[-1] + self.pad_frames
        window = min(MAX_FRAMES, max(self.min_window_frames, -(-frames // 100) * 100))
        features = pad_or_trim(features, window)
        max_tokens = int(16 + 8 * len(audio) / SAMPLE_RATE_HZ)  # ~3 words/s speech; stops loops
        result = self.model.model.generate(
            get_ctranslate2_storage(features[None]), [self._prompt], beam_size=self.beam_size,
            max_length=min(224, len(self._prompt) + max_tokens), suppress_blank=True, suppress_tokens=[-1])
        return self.tokenizer.decode(result[0].sequences_ids[0]).strip()


def _norm(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum())


@dataclass
class LocalAgreement:
    """Commits the longest common word prefix of two consecutive hypotheses (LocalAgreement-2)."""

    committed: list[str] = field(default_factory=list)
    _previous: list[str] = field(default_factory=list)

    def update(self, hypothesis: str) -> list[str]:
        """Feed a full-utterance hypothesis; return the words newly committed."""
        words = hypothesis.split()
        fresh: list[str] = []
        i = len(self.committed)
        while (i < len(words) and i < len(self._previous)
               and _norm(words[i]) == _norm(self._previous[i])
               and all(_norm(a) == _norm(b) for a, b in zip(self.committed, words))):
            fresh.append(words[i])
            i += 1
        self.committed.extend(fresh)
        self._previous = words
        return fresh

    def text(self) -> str:
        """The committed words so far."""
        return " ".join(self.committed)

    def reset(self) -> None:
        """Start a new utterance."""
        self.committed.clear()
        self._previous = []
