"""The loaded models of one process: ASR, reply LLM, TTS — loaded once, shared by sessions.

In: `Config`. Out: `Stack`. Cost on 2 cores: ~3 s (whisper 0.6 s, piper 0.4 s, SmolLM2 +
verify-cost calibration ~2 s). Raises `ModelNotReady` naming the fix when a model is missing.
Each model runs on its own single worker thread: calls from all sessions queue there in
order, and each model's scratch memory lives in one thread's allocator arena instead of
spreading over a growing pool (measured: the pool let RSS creep up with concurrency).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from voice.asr import WhisperASR
from voice.config import Config
from voice.llm import ReplyModel
from voice.models import piper_path, whisper_path
from voice.tts import PiperTTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stack:
    """The three models of the pipeline."""

    asr: WhisperASR
    llm: ReplyModel
    tts: PiperTTS
    asr_worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "asr"))
    llm_worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "llm"))
    tts_worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "tts"))


def load_stack(cfg: Config) -> Stack:
    """Load every model named by the config."""
    t = time.perf_counter()
    asr = WhisperASR(str(whisper_path(cfg.models)), cfg.asr.language, cfg.asr.beam_size,
                     cfg.asr.compute_type, cfg.asr.threads, cfg.asr.min_window_frames,
                     cfg.asr.pad_frames, cfg.asr.no_speech_threshold, cfg.asr.log_prob_threshold,
                     cfg.asr.loop_retry_window_frames, cfg.asr.loop_retry_temperature_step,
                     cfg.asr.loop_retry_max_temperature)
    tts = PiperTTS(piper_path(cfg.models), cfg.tts.length_scale)
    llm = ReplyModel(cfg)
    log.info("models loaded in %.1f s", time.perf_counter() - t)
    return Stack(asr, llm, tts)
