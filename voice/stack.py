"""The loaded models of one process: ASR, reply LLM, TTS — loaded once, shared by sessions.

In: `Config`. Out: `Stack`. Cost: loading the three models once, and timing the target's
steps for the verify-cost calibration. Raises `ModelNotReady` naming the fix when a model is missing.
ASR and TTS each run on one `PriorityWorker` thread: calls from all sessions queue there,
the urgent ones first (a final transcript before anyone's partial; a reply's first phrase
before phrases of replies already talking; decodes of one priority and window batched), and
each model's scratch memory lives in one thread's allocator arena instead of spreading over
a growing pool (where RSS crept up with concurrency). The LLM runs on the decode scheduler's thread
(`ReplyModel.scheduler`), which batches all sessions' replies. With `llm.backend = "openai"`
the server is checked first (`GET /models`, a second at most), so a dead one fails before
the models load. `close_stacks()` stops every loaded stack's threads after their current
call: a daemon thread still inside a native call when the interpreter exits aborts the
process ("terminate called without an active exception").
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from voice.asr import Transcription, WhisperASR
from voice.config import Config, ConfigError, LLMConfig
from voice.llm import ReplyModel
from voice.models import piper_path, whisper_path
from voice.remote_llm import CHECK_TIMEOUT_S, RemoteReplies, check_server
from voice.replies import Replies
from voice.tts import PiperTTS

log = logging.getLogger(__name__)


URGENT, NORMAL = 0, 1


@dataclass(frozen=True)
class Batched:
    """One item of a call that serves several items at once: `fn([item, ...])` returns one
    result per item, in order. Queued items with the same `fn`, `key` and priority run together,
    at most `limit` of them."""

    fn: Callable[[list[Any]], list[Any]]
    item: Any
    key: Any
    limit: int

    def joins(self, other: Any) -> bool:
        """Whether `other` (a queued call) may run in this one's batch."""
        return isinstance(other, Batched) and other.fn == self.fn and other.key == self.key


class PriorityWorker:
    """One thread running submitted calls, lowest priority number first, in order within one.

    A `Batched` call takes the queued calls of its priority that join it into one call."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[int, int, Future, Callable[[], Any] | Batched]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], priority: int = NORMAL) -> Future:
        """Queue `fn()`; its result or exception comes back through the future."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                future.set_exception(RuntimeError(f"the {self._thread.name} worker is closed"))
                return future
            heapq.heappush(self._heap, (priority, next(self._count), future, fn))
            self._cond.notify()
        return future

    async def run_batched(
        self, fn: Callable[[list[Any]], list[Any]], item: Any, key: Any, limit: int, priority: int = NORMAL
    ) -> Any:
        """`fn([item])[0]`, awaited; run in one `fn` call with up to `limit - 1` queued items of
        the same `fn`, `key` and priority (`key` None: alone)."""
        call = Batched(fn, item, key, limit if key is not None else 1)
        return await asyncio.wrap_future(self.submit(call, priority))  # type: ignore[arg-type]

    def waiting(self) -> int:
        """Calls queued and not yet started."""
        with self._cond:
            return len(self._heap)

    async def run(self, fn: Callable[[], Any], priority: int = NORMAL) -> Any:
        """`fn()` on the worker, awaited."""
        return await asyncio.wrap_future(self.submit(fn, priority))

    def close(self, timeout_s: float = 60.0) -> None:
        """Cancel the queued calls and return once the running one (if any) has finished."""
        with self._cond:
            self._closed = True
            for _, _, future, _ in self._heap:
                future.cancel()
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                priority, _, future, fn = heapq.heappop(self._heap)
                batch = self._take_batch(priority, fn) if isinstance(fn, Batched) else []
            if isinstance(fn, Batched):
                self._run_batch([(future, fn), *batch])
                continue
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up on it while it waited
            try:
                future.set_result(fn())
            except BaseException as err:  # the caller gets it; the worker keeps serving
                future.set_exception(err)

    def _take_batch(self, priority: int, first: Batched) -> list[tuple[Future, Batched]]:
        """Remove and return the queued calls that join `first`'s batch, oldest first (lock held)."""
        joining = sorted(e for e in self._heap if e[0] == priority and first.joins(e[3]))[: first.limit - 1]
        if joining:
            taken = {id(e[2]) for e in joining}
            self._heap = [e for e in self._heap if id(e[2]) not in taken]
            heapq.heapify(self._heap)
        return [(future, call) for _, _, future, call in joining]

    @staticmethod
    def _run_batch(calls: list[tuple[Future, Batched]]) -> None:
        live = [(f, c) for f, c in calls if f.set_running_or_notify_cancel()]  # drop the abandoned
        if not live:
            return
        try:
            results = live[0][1].fn([c.item for _, c in live])
        except BaseException as err:  # every caller of the batch gets it; the worker keeps serving
            for future, _ in live:
                future.set_exception(err)
            return
        for (future, _), result in zip(live, results):
            future.set_result(result)


@dataclass(frozen=True)
class Stack:
    """The three models of the pipeline."""

    asr: WhisperASR
    llm: ReplyModel
    tts: PiperTTS
    asr_worker: PriorityWorker = field(default_factory=lambda: PriorityWorker("asr"))
    tts_worker: PriorityWorker = field(default_factory=lambda: PriorityWorker("tts"))
    remote: RemoteReplies | None = None  # an OpenAI-compatible server (`llm.base_url`), if configured

    async def transcribe(self, audio: Any, priority: int = NORMAL) -> Transcription:
        """`asr.transcribe_detailed(audio)` on the ASR thread, in one batch with the queued decodes
        of other sessions that share its priority and window (at most `asr.max_batch`)."""
        asr = self.asr
        return await self.asr_worker.run_batched(
            asr.transcribe_batch, audio, asr.batch_key(audio), asr.max_batch, priority
        )

    def replies(self, llm: LLMConfig) -> Replies:
        """What writes the replies for sessions configured with `llm` (`llm.backend`)."""
        if llm.backend == "local":
            return self.llm
        if llm.backend != "openai":
            raise ConfigError(f"llm.backend: expected local or openai, got {llm.backend!r}")
        if self.remote is None:
            raise ConfigError("llm.backend=openai needs llm.base_url (the server's /v1 URL) when the models load")
        return self.remote

    def close(self) -> None:
        """Stop the threads in order, each after its current call: the decode scheduler, then ASR
        and TTS (a reply in flight needs neither once the decoder stopped)."""
        scheduler = getattr(self.llm, "scheduler", None)
        if scheduler is not None:
            scheduler.close()
        self.asr_worker.close()
        self.tts_worker.close()


_loaded: list[Stack] = []  # what `close_stacks` stops, in the order they were loaded


def stacks_loaded() -> int:
    """How many stacks `load_stack` has returned and `close_stacks` not yet closed."""
    return len(_loaded)


def close_stacks(keep: int = 0) -> None:
    """Close the stacks loaded after the first `keep` (the CLI: those its command loaded), newest first."""
    while len(_loaded) > keep:
        _loaded.pop().close()


def check_llm_server(llm: LLMConfig) -> None:
    """With `llm.backend = "openai"`: raise `LLMServerError` (one line) unless the server at
    `llm.base_url` answers its model list with `llm.model` in it."""
    if llm.backend != "openai":
        return
    if not llm.base_url:
        raise ConfigError("llm.backend=openai needs llm.base_url, e.g. http://127.0.0.1:8080/v1")
    timeout_s = min(llm.timeout_s, CHECK_TIMEOUT_S)
    check_server(llm.base_url, llm.model, os.environ.get(llm.api_key_env), llm.api_key_env, timeout_s)


def remote_replies(cfg: Config, tokenize: Callable[[str], list[int]]) -> RemoteReplies | None:
    """The OpenAI-compatible backend at `llm.base_url` (None when unset); `tokenize`: the embedded
    model's (`ReplyModel.token_ids`), which counts the streamed text's tokens."""
    c = cfg.llm
    if not c.base_url:
        if c.backend == "openai":
            raise ConfigError("llm.backend=openai needs llm.base_url, e.g. http://127.0.0.1:8080/v1")
        return None
    return RemoteReplies(
        c.base_url,
        c.model,
        tokenize,
        c.max_new_tokens,
        c.temperature,
        c.top_p,
        c.system_prompt,
        c.api_key_env,
        c.timeout_s,
    )


def load_stack(cfg: Config) -> Stack:
    """Check the LLM server (`llm.backend = "openai"`), then load every model named by the config."""
    check_llm_server(cfg.llm)
    t = time.perf_counter()
    asr = WhisperASR(
        str(whisper_path(cfg.models)),
        cfg.asr.language,
        cfg.asr.beam_size,
        cfg.asr.compute_type,
        cfg.asr.threads,
        cfg.asr.min_window_frames,
        cfg.asr.pad_frames,
        cfg.asr.no_speech_threshold,
        cfg.asr.log_prob_threshold,
        cfg.asr.loop_retry_window_frames,
        cfg.asr.loop_retry_temperature_step,
        cfg.asr.loop_retry_max_temperature,
        cfg.asr.max_batch,
    )
    tts = PiperTTS(piper_path(cfg.models), cfg.tts.length_scale, cfg.tts.threads)
    llm = ReplyModel(cfg)
    remote = remote_replies(cfg, llm.token_ids)
    log.info("models loaded in %.1f s", time.perf_counter() - t)
    stack = Stack(asr, llm, tts, remote=remote)
    _loaded.append(stack)
    return stack
