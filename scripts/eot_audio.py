"""The spoken items of scripts/eot_eval.py: piper's deterministic speech, cut after a word.

In: text (and for a cut item the full turn it was cut from). Out: float audio at 16 kHz with
piper's own trailing quiet trimmed (`spoken`, cached as WAV) or the full turn's speech up to
the gap after the prefix's last word (`cut_after`, from piper's phoneme alignments).
Cost: one piper synthesis per uncached item; `AlignedVoice` needs `pip install onnx`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def trim_trailing_quiet(audio: np.ndarray, frame: int = 160, floor_db: float = -60.0) -> np.ndarray:
    """Drop trailing 10 ms frames quieter than floor_db (piper's own tail), so the silence is ours."""
    n = audio.size // frame
    rms_db = 20 * np.log10(np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-9)
    loud = np.nonzero(rms_db > floor_db)[0]
    return audio[: (loud[-1] + 1) * frame] if loud.size else audio


class AlignedVoice:
    """Piper with phoneme alignments (the model patched in memory; needs the `onnx` package)."""

    def __init__(self, model_path: Path) -> None:
        from piper import PiperVoice, SynthesisConfig

        self.voice = PiperVoice.load(str(model_path), include_alignments=True)
        self.config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)  # deterministic, as PiperTTS
        self.rate_hz = int(self.voice.config.sample_rate)

    def word_ends(self, text: str) -> tuple[np.ndarray, list[int]]:
        """int16 audio of `text` and the sample where each gap between spoken words begins."""
        chunks = list(self.voice.synthesize(text, syn_config=self.config, include_alignments=True))
        if len(chunks) != 1 or chunks[0].phoneme_alignments is None:
            raise RuntimeError(
                "piper gave no phoneme alignments: `pip install onnx` (piper-tts[alignment]); "
                "eot_eval needs it to cut speech after a word"
            )
        ends, at = [], 0
        for a in chunks[0].phoneme_alignments:
            if a.phoneme == " ":
                ends.append(at)
            at += int(a.num_samples)
        return chunks[0].audio_int16_array, ends

    def n_words(self, text: str) -> int:
        """Spoken words in `text` as espeak groups them ("of the" is one: ʌvðə)."""
        return "".join(sum(self.voice.phonemize(text), [])).strip().count(" ") + 1


def cut_after(voice: AlignedVoice, full: str, prefix: str, rate_hz: int = 16000) -> np.ndarray:
    """The full turn's speech up to the gap after the words of `prefix`, at rate_hz: the
    prosody of a speaker who stops mid-sentence, not of one ending a sentence."""
    from audio.wavio import pcm16_to_float, resample

    audio, ends = voice.word_ends(full)
    n = voice.n_words(prefix)
    if n > len(ends):
        raise ValueError(f"{prefix!r} is not a prefix of {full!r} in piper's words")
    return resample(pcm16_to_float(audio[: ends[n - 1]]), voice.rate_hz, rate_hz)


def spoken(text: str, stack, cache: Path, rate_hz: int = 16000) -> np.ndarray:
    """Piper's deterministic audio of `text` at rate_hz, trailing quiet trimmed (cached WAV)."""
    from audio.wavio import read_wav, write_wav

    path = cache / f"{hashlib.sha1(text.encode()).hexdigest()[:12]}.wav"
    if not path.is_file():
        write_wav(path, stack.tts.synthesize_all(text, deterministic=True), stack.tts.rate_hz)
    return trim_trailing_quiet(read_wav(path, rate_hz))
