"""Where speech ends in a whole recording: the bench's clock for the turn gap.

In: a clip's mono float32 samples at 16 kHz. Out: `last_voiced_sample`, the index just past
its last speech, held against each band's noise floor so that background noise does not count
as speech; independent of the pipeline's VAD, so a turn gap measured from it includes the
endpoint's wait. Cost: an FFT per 10 ms of audio.
"""

from __future__ import annotations

import numpy as np

from audio.frames import SAMPLE_RATE_HZ

# Bands over which speech is sought: above mains hum and most rumble, up to 8 kHz (fricatives).
BAND_EDGES_HZ = (150, 300, 500, 800, 1200, 1800, 2600, 3600, 5000, 8000)


def band_powers(
    samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ, hop_ms: int = 10, window_ms: int = 32
) -> np.ndarray:
    """Power per frame and band, shape (frames, bands); frame k is centred on sample k * hop.

    Hann-windowed FFT frames summed over `BAND_EDGES_HZ` (bands above Nyquist are dropped).
    """
    hop, win = rate_hz * hop_ms // 1000, rate_hz * window_ms // 1000
    padded = np.concatenate([np.zeros(win // 2), np.asarray(samples, np.float64), np.zeros(win // 2)])
    n = (len(padded) - win) // hop + 1
    if len(samples) == 0 or n <= 0:
        return np.zeros((0, 1))
    index = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spectrum = np.abs(np.fft.rfft(padded[index] * np.hanning(win), axis=1)) ** 2
    edges = [int(hz * win / rate_hz) for hz in BAND_EDGES_HZ if hz <= rate_hz // 2]
    return np.add.reduceat(spectrum[:, : edges[-1]], edges[:-1], axis=1)


def noise_floor(powers: np.ndarray, floor_pct: float = 10.0, margin_db: float = 6.0) -> np.ndarray:
    """Noise power per column of `powers` (frames × bands), assuming the noise is stationary.

    A low percentile underestimates the mean of a fluctuating noise, so it only picks the quiet
    frames (every band within `margin_db` of it); the floor is their mean. At least -80 dB of
    the loudest cell, so digital silence does not make every rounding error look like speech.
    """
    tiny = max(float(powers.max()) * 1e-8, 1e-20)
    low = np.maximum(np.percentile(powers, floor_pct, axis=0), tiny)
    quiet = powers[(powers <= low * 10 ** (margin_db / 10)).all(axis=1)]
    return np.maximum(quiet.mean(axis=0), tiny) if len(quiet) >= 5 else low


def speech_excess_db(samples: np.ndarray, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Per 10 ms frame: how far the loudest band stands above its noise floor, in dB (>= 0)."""
    powers = band_powers(samples, rate_hz)
    if not powers.size or powers.max() <= 0:
        return np.zeros(len(powers))
    excess = 10 * np.log10(np.maximum(powers, 1e-30) / noise_floor(powers)).max(axis=1)
    return np.maximum(excess, 0.0)


def _last_run_end(above: np.ndarray, min_run: int) -> int:
    """End index (exclusive) of the last run of True at least `min_run` long; 0 if none."""
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    long_runs = [end for start, end in zip(starts, ends) if end - start >= min_run]
    return int(long_runs[-1]) if long_runs else 0


def _refine_end(samples: np.ndarray, coarse: int, span: int, block: int, threshold_db: float) -> int:
    """Sharpen a frame-level end to `block` samples: the last block within `span` before or after
    `coarse` whose power clears the (time-domain) noise floor by `threshold_db`; else `coarse`."""
    n = len(samples) // block
    power = (np.asarray(samples[: n * block], np.float64).reshape(n, block) ** 2).mean(axis=1)
    if n == 0 or power.max() <= 0:
        return coarse
    floor = noise_floor(power[:, None])[0]
    lo, hi = max(0, (coarse - span) // block), min(n, (coarse + span) // block + 1)
    loud = np.nonzero(power[lo:hi] > floor * 10 ** (threshold_db / 10))[0]
    return int((lo + loud[-1] + 1) * block) if len(loud) else coarse


def last_voiced_sample(
    samples: np.ndarray,
    rate_hz: int = SAMPLE_RATE_HZ,
    threshold_db: float = 6.0,
    hangover_db: float = 3.0,
    min_run_ms: int = 50,
) -> int:
    """Index just past the last speech in `samples`, robust to stationary background noise.

    Speech = a run of >= `min_run_ms` of 10 ms frames whose loudest band (150 Hz-8 kHz) stands
    `threshold_db` above that band's noise floor (`noise_floor`), extended while it stays
    `hangover_db` above; the end is then sharpened to 5 ms in the time domain. An energy scan
    independent of the pipeline's VAD, used to time the true end of speech; in noise it ends
    early where the noise buries a soft last syllable (tests/commands/test_speech_end.py
    holds it near the true end in white and pink noise).
    """
    excess = speech_excess_db(samples, rate_hz)
    if not len(excess):
        return 0
    excess = np.convolve(excess, np.ones(2) / 2, mode="same")  # one stray frame does not end a run
    hop = rate_hz // 100
    end = _last_run_end(excess > threshold_db, max(1, min_run_ms // 10))
    if end == 0:
        return 0
    while end < len(excess) and excess[end] > hangover_db:
        end += 1
    coarse = min(len(samples), int((end - 0.5) * hop))
    return min(len(samples), _refine_end(samples, coarse, rate_hz * 32 // 1000, rate_hz // 200, threshold_db))
