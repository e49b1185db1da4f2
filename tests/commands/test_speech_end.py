import numpy as np
import pytest

from commands.speech_end import band_powers, last_voiced_sample, noise_floor

RATE = 16000


def syllables(seed: int = 0, count: int = 8) -> np.ndarray:
    """Speech-like test signal: harmonic syllables (falling pitch, 20 ms ramps), a few word gaps,
    and a last syllable 6 dB softer, as questions often end."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(count):
        n = int(rng.uniform(0.12, 0.25) * RATE)
        f0 = 120 + 30 * rng.random() - 20 * np.arange(n) / n
        phase = 2 * np.pi * np.cumsum(f0) / RATE
        tone = sum(np.sin(h * phase) / h for h in range(1, 12))
        ramp = np.sin(np.linspace(0, np.pi / 2, int(0.02 * RATE))) ** 2
        envelope = np.concatenate([ramp, np.ones(n - 2 * len(ramp)), ramp[::-1]])
        parts.append((0.5 if i == count - 1 else rng.uniform(0.7, 1.0)) * envelope * tone)
        if i in (2, 5):
            parts.append(np.zeros(int(rng.uniform(0.03, 0.08) * RATE)))
    speech = np.concatenate(parts)
    return (0.3 * speech / np.abs(speech).max()).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise above 50 Hz (a microphone's high-pass takes the rest)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spectrum)), 50 * n / RATE)
    return np.fft.irfft(spectrum / np.sqrt(f), n)


def in_noise(
    speech: np.ndarray, kind: str, snr_db: float, seed: int = 1, lead_s: float = 0.3, tail_s: float = 1.0
) -> tuple[np.ndarray, int]:
    """Speech with noise all through, starting `lead_s` before it and going on `tail_s` after
    (as a recording would); SNR against the speech's active power. Returns (mix, true end)."""
    rng = np.random.default_rng(seed)
    lead, tail = int(lead_s * RATE), int(tail_s * RATE)
    clean = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    noise = rng.standard_normal(len(clean)) if kind == "white" else pink(len(clean), rng)
    active = speech[np.abs(speech) > 1e-4].astype(np.float64)
    noise *= np.sqrt(np.mean(active**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (clean + noise).astype(np.float32), lead + len(speech)


@pytest.mark.parametrize("kind", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [20, 15, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_end_of_speech_in_stationary_noise_is_within_60_ms(kind, snr_db, seed):
    mix, true_end = in_noise(syllables(seed), kind, snr_db, seed=seed + 10)
    assert abs(last_voiced_sample(mix) - true_end) <= 0.060 * RATE
    # the old rule (frames above 5 % of the loudest) ran to the end of the noise here
    assert len(mix) - last_voiced_sample(mix) > 0.9 * RATE


def test_end_of_clean_speech_is_sample_accurate():
    speech = syllables(3)
    clean = np.concatenate([np.zeros(4000), speech, np.zeros(8000)]).astype(np.float32)
    assert abs(last_voiced_sample(clean) - (4000 + len(speech))) <= 0.005 * RATE


def test_silence_and_empty_input_have_no_speech():
    assert last_voiced_sample(np.zeros(16000, np.float32)) == 0
    assert last_voiced_sample(np.zeros(0, np.float32)) == 0


def test_noise_floor_is_the_noise_power_even_under_mostly_speech():
    # speech fills ~75 % of the frames; a plain low percentile would sit under the noise mean
    rng = np.random.default_rng(5)
    speech = syllables(4)
    clean = np.concatenate([np.zeros(3200), speech, np.zeros(4800)])
    mix = clean + 0.01 * rng.standard_normal(len(clean))
    noise_alone = band_powers(0.01 * rng.standard_normal(len(clean))).mean(axis=0)
    floor = noise_floor(band_powers(mix))
    assert len(floor) == 9
    assert np.all(np.abs(10 * np.log10(floor / noise_alone)) < 1.0)


def audible_end(speech: np.ndarray, below_peak_db: float = 40.0) -> int:
    """End of the last 10 ms frame of clean speech within `below_peak_db` of the loudest frame
    (piper's voice fades out over ~50 ms below that, under any noise)."""
    n = len(speech) // 160
    rms = np.sqrt((speech[: n * 160].reshape(n, 160).astype(np.float64) ** 2).mean(axis=1))
    return int(np.nonzero(rms > rms.max() * 10 ** (-below_peak_db / 20))[0][-1] + 1) * 160


@pytest.mark.slow
@pytest.mark.parametrize("snr_db", [20, 15, 10])
def test_end_of_piper_question_in_noise(stack, snr_db):
    from audio.wavio import pcm16_to_float, resample

    tts = stack.tts
    speech = resample(
        pcm16_to_float(tts.synthesize_all("Give me a short tip for sleeping better.", deterministic=True)),
        tts.rate_hz,
        RATE,
    )
    for kind in ("white", "pink"):
        mix, clip_end = in_noise(speech, kind, snr_db)
        true_end = clip_end - len(speech) + audible_end(speech)
        assert abs(last_voiced_sample(mix) - true_end) <= 0.060 * RATE, kind


def test_last_voiced_sample_from_energy():
    x = np.zeros(16000, np.float32)
    x[4000:8000] = 0.5 * np.sin(np.arange(4000) / 5)
    assert 7800 <= last_voiced_sample(x) <= 8000
    assert last_voiced_sample(np.zeros(100, np.float32)) == 0
