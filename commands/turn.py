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


def batch_turn(audio_16k: np.ndarray, asr: WhisperASR, llm: ReplyModel | RemoteReplies, tts: PiperTTS) -> TurnResult:
    """Transcribe all, generate all (`llm`: the embedded model or a server), synthesise all."""
    t0 = time.perf_counter()
    # the quiet a session's utterance starts with (its VAD preroll): whisper-base int8 can mishear
    # a first word that starts the file ("capital of friends" for "France" on an AVX-512 EPYC)
    lead = np.zeros(PREROLL_WINDOWS * WINDOW, np.float32)
    transcript = asr.transcribe(np.concatenate([lead, audio_16k.astype(np.float32, copy=False)]))
    t1 = time.perf_counter()
    messages = [{"role": "user", "content": transcript}]
    if isinstance(llm, RemoteReplies):
        spans = remote_reply(llm, messages)
    else:
        with llm.lock:
            spans = list(llm.reply_plain(messages))
    reply = "".join(s.text for s in spans).strip()
    t2 = time.perf_counter()
    audio = tts.synthesize_all(reply)
    t3 = time.perf_counter()
    return TurnResult(
        transcript,
        reply,
        audio,
        tts.rate_hz,
        (t1 - t0) * 1e3,
        (t2 - t1) * 1e3,
        (t3 - t2) * 1e3,
        sum(len(s.token_ids) for s in spans),
    )


def remote_reply(remote: RemoteReplies, messages: list[dict[str, str]]) -> list[Span]:
    """The server's whole reply to `messages`, read on an event loop of its own (`voice turn` runs
    none); raises its `LLMServerError` if the request failed."""

    async def spans() -> list[Span]:
        return [span async for span in remote.reply(messages)]

    return asyncio.run(spans())
