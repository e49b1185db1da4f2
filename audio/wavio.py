"""WAV file I/O and resampling.

In: a path or int16/float arrays. Out: mono float32 samples in [-1, 1] at the rate asked
(soxr resampling), or a written 16-bit PCM WAV. Raises `AudioError` with a message a user
can act on for missing, empty or unsupported files.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

MAX_WAV_SECONDS = 600.0


class AudioError(ValueError):
    """Audio input that cannot be used; the message says why."""


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Resample mono float32 samples with soxr (no-op when the rates match)."""
    import soxr

    samples = np.asarray(samples, dtype=np.float32)
    if from_hz == to_hz or samples.size == 0:
        return samples
    return soxr.resample(samples, from_hz, to_hz).astype(np.float32)


def pcm16_to_float(data: bytes | np.ndarray) -> np.ndarray:
    """int16 PCM (bytes or array) to float32 in [-1, 1)."""
    arr = np.frombuffer(data, dtype="<i2") if isinstance(data, (bytes, bytearray, memoryview)) else data
    return arr.astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] to int16 (clipped)."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def read_wav(path: str | Path, rate_hz: int = 16000) -> np.ndarray:
    """Read a PCM WAV (8/16/32-bit, any rate, mono or multi-channel) as mono float32 at rate_hz."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if frames == 0:
                raise AudioError(f"{path}: the WAV has no audio")
            if frames / rate > MAX_WAV_SECONDS:
                raise AudioError(f"{path}: {frames / rate:.0f} s is longer than {MAX_WAV_SECONDS:.0f} s")
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as err:
        raise AudioError(f"{path}: not a PCM WAV file ({err}); convert it, e.g. `sox in.mp3 -b 16 out.wav`") from None
    kinds = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2147483648.0)}
    if width not in kinds:
        raise AudioError(f"{path}: {8 * width}-bit samples are not supported (use 16-bit PCM)")
    dtype, offset, scale = kinds[width]
    data = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - offset) / scale
    data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1)
    return resample(data, rate, rate_hz)


def write_wav(path: str | Path, samples: np.ndarray, rate_hz: int) -> None:
    """Write mono samples (float32 in [-1, 1], or int16) as a 16-bit PCM WAV."""
    pcm = samples if samples.dtype == np.int16 else float_to_pcm16(samples)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.astype("<i2").tobytes())
