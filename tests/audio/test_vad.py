import subprocess
import sys
from pathlib import Path

import numpy as np

from audio.frames import AudioFrame, Reframer
from audio.vad import Endpointer, VadKind


def run(probs, **kw):
    ep = Endpointer(window_ms=32.0, **kw)
    return [(i, e.kind) for i, p in enumerate(probs) for e in ep.update(p, float(i))]


def test_endpoint_after_configured_silence():
    events = run([0.9] * 10 + [0.0] * 12, end_silence_ms=300, min_speech_ms=96)
    assert events == [(2, VadKind.SPEECH_START), (10, VadKind.FIRST_SILENCE), (19, VadKind.SILENCE_LIMIT)]


def test_short_blip_is_not_speech_and_a_pause_resumes():
    assert run([0.9, 0.9, 0.0, 0.0] * 3, min_speech_ms=150) == []
    events = run([0.9] * 8 + [0.0] * 4 + [0.9] * 4 + [0.0] * 12, end_silence_ms=300, min_speech_ms=96)
    kinds = [k for _, k in events]
    assert kinds == [
        VadKind.SPEECH_START,
        VadKind.FIRST_SILENCE,
        VadKind.SPEECH_RESUMED,
        VadKind.FIRST_SILENCE,
        VadKind.SILENCE_LIMIT,
    ]


def test_hysteresis_keeps_soft_syllables_in_speech():
    events = run([0.9] * 6 + [0.4] * 20 + [0.0] * 12, threshold=0.5, end_silence_ms=300, min_speech_ms=96)
    assert [i for i, k in events if k is VadKind.FIRST_SILENCE] == [26]


def test_reframer_cuts_exact_windows():
    r = Reframer(512)
    out = r.push(AudioFrame(np.ones(700, np.float32), 1.0)) + r.push(AudioFrame(np.ones(400, np.float32), 2.0))
    assert [len(w.samples) for w in out] == [512, 512] and [w.t for w in out] == [1.0, 2.0]


def test_loading_silero_leaves_the_llm_its_threads():
    """silero_vad's first import sets torch's threads to 1 for the whole process; a session's
    VAD must not silently take the LLM's `llm.threads` away (a fresh process: the import is once)."""
    code = (
        "import torch; torch.set_num_threads(3)\n"
        "from audio.vad import SileroVAD\n"
        "SileroVAD()\n"
        "print(torch.get_num_threads())\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
