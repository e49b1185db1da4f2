"""Audio end-of-turn score: Smart Turn v3.2, pipecat's ONNX classifier, on the turn's last 8 s.

In: the user's turn so far as 16 kHz mono float32, ending with the silence heard at the
moment of a decision (~200 ms). Out: P(turn complete) in [0, 1], read from prosody and
timing, not words. The model input is pipecat's own (`LocalSmartTurnAnalyzerV3`): the
last 8 s, zero-padded at the start, as Whisper log-mel features (80 x 800, waveform
normalised to zero mean / unit variance) under the input name `input_features`; the
output (named `logits`) is already a sigmoid probability. Cost: the log-mel features and one
ONNX encoder pass on one onnxruntime thread, pipecat's default (measured: docs/benchmarks.md).
The 8.7 MB model ships in the `pipecat-ai` wheel (BSD-2), installed with
--no-deps from scripts/models.txt. Not in the pipeline: `scripts/eot_eval.py` compares it with
the LLM's end-of-turn score (docs/benchmarks.md says why the pipeline goes without it).
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import numpy as np

from voice.errors import VoiceError

log = logging.getLogger(__name__)

PACKAGE = "pipecat-ai"
PACKAGE_VERSION = "1.14.0"  # the version pinned in scripts/models.txt
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SAMPLE_RATE_HZ = 16000
WINDOW_S = 8
N_MELS = 80


class SmartTurnNotInstalled(VoiceError, RuntimeError):
    """The pipecat-ai wheel that carries the Smart Turn model is missing."""


def model_path() -> Path:
    """The ONNX file inside the installed pipecat-ai wheel.

    Found through the wheel's metadata, not by importing `pipecat`: its `__init__` needs
    loguru, which a --no-deps install does not bring.
    """
    fix = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} (scripts/models.txt)"
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SmartTurnNotInstalled(f"Smart Turn needs the {PACKAGE} wheel: {fix}") from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise SmartTurnNotInstalled(f"{PACKAGE} {dist.version} has no {MODEL_FILE}: {fix}")
    if dist.version != PACKAGE_VERSION:
        log.warning("%s %s installed, Smart Turn was measured with %s", PACKAGE, dist.version, PACKAGE_VERSION)
    return path


def last_window(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """The last `n_samples` of `audio`, zero-padded at the start when shorter (the model's view)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size >= n_samples:
        return audio[audio.size - n_samples :]
    return np.concatenate([np.zeros(n_samples - audio.size, dtype=np.float32), audio])


class SmartTurn:
    """A loaded Smart Turn v3.2 session; `prob(audio)` is P(the turn is complete)."""

    def __init__(self, path: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort
        from transformers import WhisperFeatureExtractor

        self.path = Path(path) if path else model_path()
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        self.threads = threads
        # Built from parameters (nothing fetched from the hub); pipecat vendors the same
        # extractor in numpy, and the two agree to 1e-6 on the same audio.
        self.extractor = WhisperFeatureExtractor(
            feature_size=N_MELS, sampling_rate=SAMPLE_RATE_HZ, hop_length=160, chunk_length=WINDOW_S, n_fft=400
        )

    def features(self, audio_16k: np.ndarray) -> np.ndarray:
        """Whisper log-mel features (80, 800) of the last 8 s, as the model was trained on."""
        n = WINDOW_S * SAMPLE_RATE_HZ
        out = self.extractor(
            last_window(audio_16k, n),
            sampling_rate=SAMPLE_RATE_HZ,
            padding="max_length",
            max_length=n,
            truncation=True,
            do_normalize=True,
            return_tensors="np",
        )
        return out.input_features[0].astype(np.float32)

    def prob(self, audio_16k: np.ndarray) -> float:
        """P(turn complete) for the turn's audio so far, trailing silence included."""
        if np.asarray(audio_16k).size == 0:
            raise ValueError("Smart Turn needs some audio: got an empty array")
        (out,) = self.session.run(None, {"input_features": self.features(audio_16k)[None]})
        return float(out.reshape(-1)[0])
