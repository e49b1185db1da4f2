"""Text-to-speech with piper: a phrase in, 22.05 kHz int16 audio chunks out.

In: a phrase of text. Out: `AudioChunk`s (piper yields one per sentence). Cost: piper's
compute, proportional to the speech's length and well under it on a CPU; the voice loads once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from voice.errors import VoiceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioChunk:
    """Reply audio: mono int16 samples at `rate_hz`, stamped when produced."""

    samples: np.ndarray
    rate_hz: int
    t: float


class TTSError(VoiceError, RuntimeError):
    """Synthesis failed for a phrase."""


class PiperTTS:
    """A loaded piper voice."""

    def __init__(self, model_path: str | Path, length_scale: float = 1.0, threads: int = 0) -> None:
        import onnxruntime
        from piper import PiperVoice, SynthesisConfig

        self.voice = PiperVoice.load(str(model_path))
        # onnxruntime's threads spin between and after runs by default, taking a core from whisper and the
        # LLM while a phrase is synthesised beside them; ours wait without spinning
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.voice.session = onnxruntime.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.threads = threads
        self.rate_hz = int(self.voice.config.sample_rate)
        self._syn = SynthesisConfig(length_scale=length_scale)
        # piper samples generator and phoneme-width noise on every call; without it the same
        # text gives the same samples (test and benchmark speech)
        self._fixed = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)

    def synthesize(self, text: str, deterministic: bool = False) -> Iterator[AudioChunk]:
        """Yield audio chunks for `text` as piper produces them."""
        if not text.strip():
            return
        try:
            for chunk in self.voice.synthesize(text, syn_config=self._fixed if deterministic else self._syn):
                yield AudioChunk(chunk.audio_int16_array, chunk.sample_rate, time.perf_counter())
        except Exception as err:  # piper/espeak errors have no common base class
            raise TTSError(f"TTS failed for {text[:40]!r}: {err}") from err

    def synthesize_all(self, text: str, deterministic: bool = False) -> np.ndarray:
        """The whole phrase as one int16 array."""
        parts = [c.samples for c in self.synthesize(text, deterministic)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
