"""One whole turn, batch style: the naive baseline the streaming pipeline must beat.

In: a WAV file. Out: `TurnResult` with transcript, reply text, reply audio and the time of
each stage: whole-file transcription → complete greedy reply (the embedded model's, or the
OpenAI-compatible server's with `llm.backend = "openai"`) → TTS of the whole reply.
Nothing overlaps, so the turn gap is asr + llm + tts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from audio.vad import WINDOW
from decode.spans import Span
from voice.asr import WhisperASR
from voice.llm import ReplyModel
from voice.pipeline import PREROLL_WINDOWS
from voice.remote_llm import RemoteReplies
from voice.tts import PiperTTS


@dataclass(frozen=True)
class TurnResult:
    """Outcome and stage times of one batch turn."""

    transcript: str
    reply: str
    audio: np.ndarray  # int16 at rate_hz
    rate_hz: int
    asr_ms: float
    llm_ms: float
    tts_ms: float
    tokens: int

    @property
    def total_ms(self) -> float:
        """The batch turn gap: every stage in series."""
        return self.asr_ms + self.llm_ms + self.tts_ms


async def batch_turn(
    audio_16k: np.ndarray, asr: WhisperASR, llm: ReplyModel | RemoteReplies, tts: PiperTTS
) -> TurnResult:
    """Transcribe all, generate all (`llm`: the embedded model or a server), synthesise all; the
    model calls run in a worker thread, the server's reply is read on the caller's loop."""
    t0 = time.perf_counter()
    # the quiet a session's utterance starts with (its VAD preroll): whisper can mishear a first
    # word that starts the file
    lead = np.zeros(PREROLL_WINDOWS * WINDOW, np.float32)
    transcript = await asyncio.to_thread(
        asr.transcribe, np.concatenate([lead, audio_16k.astype(np.float32, copy=False)])
    )
    t1 = time.perf_counter()
    messages = [{"role": "user", "content": transcript}]
    if isinstance(llm, RemoteReplies):  # raises its `LLMServerError` if the request failed
        spans = [span async for span in llm.reply(messages)]
    else:
        spans = await asyncio.to_thread(_plain_reply, llm, messages)
    reply = "".join(s.text for s in spans).strip()
    t2 = time.perf_counter()
    reply_audio = await asyncio.to_thread(tts.synthesize_all, reply)
    t3 = time.perf_counter()
    return TurnResult(
        transcript,
        reply,
        reply_audio,
        tts.rate_hz,
        (t1 - t0) * 1e3,
        (t2 - t1) * 1e3,
        (t3 - t2) * 1e3,
        sum(len(s.token_ids) for s in spans),
    )


def _plain_reply(llm: ReplyModel, messages: list[dict[str, str]]) -> list[Span]:
    """The embedded model's whole greedy reply on its slot-0 decoder (held under its lock)."""
    with llm.lock:
        return list(llm.reply_plain(messages))
