"""The real-time path: audio frames in, reply audio out, every stage overlapping the next.

In: 16 kHz float32 blocks via `VoiceSession.feed_audio` (or typed text via `user_text`).
Out: events on `VoiceSession.events` (an asyncio.Queue): `VadState`, `Transcript`,
`ReplyText`, `AudioStart`, `AudioOut`, `TurnEnd`, `TurnError`.

The turn-gap path, in order:
1. Each 32 ms window goes through silero VAD and the `Endpointer`.
2. While the user speaks, the growing utterance is re-decoded every `asr.interval_ms`;
   LocalAgreement commits words (partial transcripts) and the LLM prefills the prompt
   with the committed words, so only the tail is left to prefill later.
3. `asr.final_tail_ms` after the first silent window the final ASR decode starts, and the
   reply starts right behind it — speculatively: its text and audio are held back until the endpoint
   (`vad.end_silence_ms` of silence) confirms the turn, and thrown away if the user
   goes on speaking.
4. Decoder spans → `PhraseChunker` → piper, phrase by phrase, in worker threads.
5. Speech starting while a reply is active is a barge-in: decoding stops within one
   verify step, queued phrases and unsent audio are dropped, the turn ends `interrupted`.
Echo: the server relies on the browser's echo cancellation; `voice talk` ignores speech
while its own reply is playing unless `--barge-in` is given (no AEC on a bare sound card).
Each model runs on its own worker thread (`Stack`), so concurrent sessions queue per model.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from audio.frames import AudioFrame, Reframer
from audio.vad import WINDOW_MS, Endpointer, SileroVAD, VadEvent
from voice.asr import LocalAgreement
from voice.chunker import PhraseChunker
from voice.config import Config
from voice.stack import Stack
from voice.tts import AudioChunk
from voice.turns import Conversation, TurnMetrics

log = logging.getLogger(__name__)

PREROLL_WINDOWS = 10  # 320 ms kept before speech_start: the detector fires late


@dataclass(frozen=True)
class VadState:
    state: str  # speech_start | speech_end
    t: float


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool
    t: float


@dataclass(frozen=True)
class ReplyText:
    text: str
    t: float


@dataclass(frozen=True)
class AudioStart:
    rate_hz: int
    t: float


@dataclass(frozen=True)
class AudioOut:
    chunk: AudioChunk


@dataclass(frozen=True)
class TurnEnd:
    metrics: TurnMetrics


@dataclass(frozen=True)
class TurnError:
    code: str
    message: str


class _Turn:
    """One reply in flight: its cancel flag, output gate and timestamps."""

    def __init__(self, speech_end_t: float = 0.0) -> None:
        self.cancel = threading.Event()
        self.gate = asyncio.Event()  # set at the endpoint: output may flow
        self.m = TurnMetrics(speech_end=speech_end_t)
        self.task: asyncio.Task | None = None
        self.out: asyncio.Queue = asyncio.Queue()  # events held until the gate opens
        self.reply_text = ""

    def stamp(self, **fields) -> None:
        self.m = replace(self.m, **fields)


class VoiceSession:
    """One user's conversation over the shared models."""

    def __init__(self, stack: Stack, cfg: Config) -> None:
        self.stack, self.cfg = stack, cfg
        self.events: asyncio.Queue = asyncio.Queue()
        self.vad = SileroVAD()
        self.endpointer = Endpointer(cfg.vad.threshold, cfg.vad.end_silence_ms, cfg.vad.min_speech_ms,
                                     hysteresis=cfg.vad.hysteresis)
        self.reframer = Reframer()
        self.conversation = Conversation(lambda msgs: len(stack.llm.chat_ids(msgs)), cfg.llm.history_tokens)
        self.agreement = LocalAgreement()
        # when set and true, speech is our own reply through the speaker (no AEC): ignore it
        self.echo_gate: Callable[[], bool] | None = None
        self._preroll: list[np.ndarray] = []
        self._utterance: list[np.ndarray] | None = None
        self._since_partial_s = 0.0
        self._partial_task: asyncio.Task | None = None
        self._turn: _Turn | None = None
        self._pending_final: list | None = None  # [speech_end_t, windows still to wait]
        self._closed = False

    # ---- input -------------------------------------------------------------------
    async def feed_audio(self, samples: np.ndarray, t: float | None = None) -> None:
        """Feed 16 kHz mono float32 samples that arrived at `t` (perf_counter)."""
        t = time.perf_counter() if t is None else t
        for window in self.reframer.push(AudioFrame(samples, t)):
            prob = self.vad.prob(window.samples)
            self._collect(window.samples)
            self._tick_final()  # counts windows after a first_silence of an earlier window
            for event in self.endpointer.update(prob, window.t):
                await self._on_vad(event)
            await self._maybe_cut_long_utterance(window.t)
            self._maybe_partial(len(window.samples) / 16000)

    async def user_text(self, text: str) -> None:
        """A typed user turn: straight to the reply."""
        await self.interrupt()
        now = time.perf_counter()
        turn = _Turn(speech_end_t=now)
        turn.stamp(endpoint=now, asr_final=now, transcript=text)
        turn.gate.set()
        self._start_reply(turn, None, text)

    async def interrupt(self) -> None:
        """Stop the current reply now (barge-in or the client's `interrupt`)."""
        turn, self._turn = self._turn, None
        if turn is None or turn.task is None or turn.task.done():
            return
        turn.cancel.set()
        turn.task.cancel()
        try:
            await turn.task
        except asyncio.CancelledError:
            pass
        if turn.gate.is_set():  # the user heard (part of) it: report and remember it
            turn.stamp(interrupted=True, reply=turn.reply_text)
            self.conversation.add(turn.m.transcript, turn.reply_text)
            await self.events.put(TurnEnd(turn.m))

    async def close(self) -> None:
        """End the session: cancel everything in flight."""
        self._closed = True
        await self.interrupt()
        if self._partial_task:
            self._partial_task.cancel()

    @property
    def idle(self) -> bool:
        """No speech in progress and no reply in flight."""
        return self._turn is None and self._utterance is None

    @property
    def replying(self) -> bool:
        """A confirmed reply is being produced."""
        return self._turn is not None and self._turn.gate.is_set() and not self._turn.task.done()

    # ---- VAD and ASR ---------------------------------------------------------------
    def _collect(self, window: np.ndarray) -> None:
        if self._utterance is not None:
            self._utterance.append(window)
        else:
            self._preroll = (self._preroll + [window])[-PREROLL_WINDOWS:]

    async def _on_vad(self, event: VadEvent) -> None:
        if event.kind == "speech_start":
            if self.echo_gate is not None and self.echo_gate():
                self.endpointer.in_speech = False  # our own voice through the speaker
                return
            if self._turn is not None:
                await self.interrupt()  # barge-in
            self._utterance = list(self._preroll)
            self._since_partial_s = 0.0
            self.agreement.reset()
            await self.events.put(VadState("speech_start", event.t))
        elif event.kind == "first_silence" and self._utterance is not None:
            # a little audio past the first quiet window keeps soft word endings ("France")
            self._pending_final = [event.speech_end_t, int(self.cfg.asr.final_tail_ms // WINDOW_MS)]
            self._tick_final(step=False)
        elif event.kind == "speech_resumed":
            self._pending_final = None
            if self._turn is not None and not self._turn.gate.is_set():
                await self.interrupt()  # the pause was not the end: drop the speculative reply
        elif event.kind == "speech_end" and self._utterance is not None:
            if self._pending_final is not None:
                self._pending_final[1] = 0
                self._tick_final(step=False)
            self._utterance = None
            self._preroll = []
            await self.events.put(VadState("speech_end", event.t))
            if self._turn is not None and not self._turn.gate.is_set():
                self._turn.stamp(endpoint=event.t)
                self._turn.gate.set()

    def _tick_final(self, step: bool = True) -> None:
        """Start the final decode (and the speculative reply) once the tail has arrived."""
        if self._pending_final is None or self._utterance is None:
            return
        if step:
            self._pending_final[1] -= 1
        if self._pending_final[1] > 0:
            return
        speech_end_t, self._pending_final = self._pending_final[0], None
        turn = _Turn(speech_end_t=speech_end_t)
        final = asyncio.ensure_future(self._final_asr(np.concatenate(self._utterance), turn))
        self._start_reply(turn, final, None)

    async def _maybe_cut_long_utterance(self, t: float) -> None:
        if self._utterance is None:
            return
        if len(self._utterance) * WINDOW_MS / 1000 >= self.cfg.vad.max_utterance_s:
            # force an endpoint: long speech becomes several turns, never unbounded memory
            await self._on_vad(VadEvent("first_silence", t, t))
            await self._on_vad(VadEvent("speech_end", t, t))
            self.endpointer.in_speech = False

    def _maybe_partial(self, dt_s: float) -> None:
        if self._utterance is None or (self._turn is not None and not self._turn.gate.is_set()):
            return
        self._since_partial_s += dt_s
        busy = self._partial_task is not None and not self._partial_task.done()
        if self._since_partial_s * 1000 < self.cfg.asr.interval_ms or busy:
            return
        self._since_partial_s = 0.0
        audio = np.concatenate(self._utterance)
        self._partial_task = asyncio.ensure_future(self._partial_asr(audio))

    async def _transcribe(self, audio: np.ndarray) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.stack.asr_worker, self.stack.asr.transcribe, audio)

    async def _partial_asr(self, audio: np.ndarray) -> None:
        text = await self._transcribe(audio)
        if self._utterance is None or self._closed:
            return
        fresh = self.agreement.update(text)
        await self.events.put(Transcript(text, False, time.perf_counter()))
        llm = self.stack.llm
        if fresh and not llm.lock.locked():  # warm the LLM cache with the committed words
            msgs = self.conversation.messages(self.agreement.text())
            await asyncio.get_running_loop().run_in_executor(
                self.stack.llm_worker, _try_locked, llm.lock, llm.prefill, msgs)

    async def _final_asr(self, audio: np.ndarray, turn: _Turn) -> str:
        text = await self._transcribe(audio)
        turn.stamp(asr_final=time.perf_counter(), transcript=text)
        return text

    # ---- reply -----------------------------------------------------------------
    def _start_reply(self, turn: _Turn, transcript: asyncio.Future | None, text: str | None) -> None:
        self._turn = turn
        turn.task = asyncio.ensure_future(self._reply(turn, transcript, text))

    async def _forward(self, turn: _Turn) -> None:
        """Release the turn's events in order once the endpoint confirms it."""
        await turn.gate.wait()
        while (event := await turn.out.get()) is not None:
            if turn.cancel.is_set():
                return
            if isinstance(event, AudioOut):
                now = time.perf_counter()
                if not turn.m.first_audio:
                    # audio made before the endpoint counts from its release at the endpoint
                    turn.stamp(first_audio=now)
                    await self.events.put(AudioStart(event.chunk.rate_hz, now))
                turn.stamp(last_audio=now)
            elif isinstance(event, TurnEnd):
                event = TurnEnd(turn.m)
            await self.events.put(event)

    async def _reply(self, turn: _Turn, transcript: asyncio.Future | None, text: str | None) -> None:
        forward = asyncio.ensure_future(self._forward(turn))
        try:
            if transcript is not None:
                text = await transcript
            turn.out.put_nowait(Transcript(text, True, turn.m.asr_final))
            if text.strip():  # noise or a cough gives an empty transcript: no reply
                turn.stamp(transcript=text)
                await self._speak_reply(turn, self.conversation.messages(text))
                turn.stamp(reply=turn.reply_text.strip())
                self.conversation.add(text, turn.reply_text.strip())
                turn.out.put_nowait(TurnEnd(turn.m))
            turn.out.put_nowait(None)
            await forward
        except asyncio.CancelledError:
            turn.cancel.set()
            forward.cancel()
            raise
        except Exception as err:  # a failing stage ends this turn, not the session
            log.exception("turn failed")
            forward.cancel()
            await self.events.put(TurnError("turn_failed", f"{type(err).__name__}: {err}"))
        finally:
            if self._turn is turn:
                self._turn = None

    async def _speak_reply(self, turn: _Turn, messages: list[dict]) -> None:
        loop = asyncio.get_running_loop()
        spans: asyncio.Queue = asyncio.Queue()
        phrases: asyncio.Queue = asyncio.Queue()
        llm = self.stack.llm

        def decode() -> None:
            try:
                if turn.cancel.is_set():  # cancelled while queued behind another session
                    return
                with llm.lock:
                    turn.stamp(llm_start=time.perf_counter())
                    for span in llm.reply(messages, turn.cancel):
                        loop.call_soon_threadsafe(spans.put_nowait, span)
                    st = llm.decoder.stats
                    turn.stamp(tokens=st.tokens, acceptance=st.acceptance, mean_draft_len=st.mean_draft_len)
            finally:
                loop.call_soon_threadsafe(spans.put_nowait, None)

        decoding = loop.run_in_executor(self.stack.llm_worker, decode)
        speaking = asyncio.ensure_future(self._tts_worker(turn, phrases))
        chunker = PhraseChunker(self.cfg.tts.first_phrase_words, self.cfg.tts.max_phrase_words)
        try:
            while (span := await spans.get()) is not None:
                if not turn.m.first_span:
                    turn.stamp(first_span=span.t)
                if span.text:
                    turn.reply_text += span.text
                    for phrase in chunker.push(span.text):
                        phrases.put_nowait(phrase)
                    turn.out.put_nowait(ReplyText(span.text, span.t))
            await decoding
            for phrase in chunker.flush():
                phrases.put_nowait(phrase)
            phrases.put_nowait(None)
            await speaking
        except BaseException:
            turn.cancel.set()  # stops the decode thread within one verify step
            speaking.cancel()
            raise

    async def _tts_worker(self, turn: _Turn, phrases: asyncio.Queue) -> None:
        """Synthesise phrases as they come (ahead of the endpoint when speculative)."""
        tts = self.stack.tts
        while (phrase := await phrases.get()) is not None:
            if turn.cancel.is_set():
                return
            chunks = await asyncio.get_running_loop().run_in_executor(
                self.stack.tts_worker, lambda p=phrase: list(tts.synthesize(p)))
            for chunk in chunks:
                turn.out.put_nowait(AudioOut(chunk))


def _try_locked(lock: threading.Lock, fn, *args) -> None:
    """Run fn only if the lock is free (an optional warm-up must never delay a reply)."""
    if lock.acquire(blocking=False):
        try:
            fn(*args)
        finally:
            lock.release()
