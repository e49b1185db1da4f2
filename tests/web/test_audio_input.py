"""PCM decoding of client audio frames, with the frame limit from config."""

import numpy as np
import pytest

from web.protocol import AudioInput, ProtocolError

START = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}


def test_frame_limit_is_the_configured_one():
    small = AudioInput(START, max_frame_bytes=1000)
    with pytest.raises(ProtocolError) as err:
        small.decode(b"\0\0" * 600)
    assert err.value.code == "frame_too_large" and "1000" in str(err.value)
    assert len(AudioInput(START, max_frame_bytes=4000).decode(b"\0\0" * 600)) == 600


def test_stereo_48k_is_mixed_and_resampled_to_16k():
    pcm = (np.ones((4800, 2)) * 1000).astype("<i2").tobytes()
    audio = AudioInput({**START, "sample_rate": 48000, "channels": 2}, max_frame_bytes=1 << 16)
    out = np.concatenate([audio.decode(pcm) for _ in range(4)])
    assert 5500 <= len(out) <= 6400 and out.dtype == np.float32  # the streaming resampler holds a little back
    assert np.allclose(out[len(out) // 2 :], 1000 / 32768, atol=1e-3)
