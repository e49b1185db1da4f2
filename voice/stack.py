"""The loaded models of one process: ASR, reply LLM, TTS — loaded once, shared by sessions.

In: `Config`. Out: `Stack`. Cost: loading the three models once, and timing the target's
steps for the verify-cost calibration. Raises `ModelNotReady` naming the fix when a model is missing.
ASR and TTS each run on one `PriorityWorker` thread: calls from all sessions queue there,
the urgent ones first (a final transcript before anyone's partial; a reply's first phrase
before phrases of replies already talking), and each model's scratch memory lives in one
thread's allocator arena instead of spreading over a growing pool (where RSS crept up with
concurrency). The LLM runs on the decode scheduler's thread
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

from voice.asr import WhisperASR
from voice.config import Config, ConfigError, LLMConfig
from voice.llm import ReplyModel
from voice.models import piper_path, whisper_path
from voice.remote_llm import CHECK_TIMEOUT_S, RemoteReplies, check_server
from voice.tts import PiperTTS

log = logging.getLogger(__name__)


URGENT, NORMAL = 0, 1


class PriorityWorker:
    """One thread running submitted calls, lowest priority number first, in order within one."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[int, int, Future, Callable[[], Any]]] = []
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
                _, _, future, fn = heapq.heappop(self._heap)
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up on it while it waited
            try:
                future.set_result(fn())
            except BaseException as err:  # the caller gets it; the worker keeps serving
                future.set_exception(err)


@dataclass(frozen=True)
class Stack:
    """The three models of the pipeline."""

    asr: WhisperASR
    llm: ReplyModel
    tts: PiperTTS
    asr_worker: PriorityWorker = field(default_factory=lambda: PriorityWorker("asr"))
    tts_worker: PriorityWorker = field(default_factory=lambda: PriorityWorker("tts"))
    remote: RemoteReplies | None = None  # an OpenAI-compatible server (`llm.base_url`), if configured

    def replies(self, llm: LLMConfig) -> ReplyModel | RemoteReplies:
        """What writes the replies for sessions configured with `llm` (`llm.backend`)."""
        if llm.backend == "local":
            return self.llm
        if llm.backend != "openai":
            raise ConfigError(f"llm.backend: expected local or openai, got {llm.backend!r}")
        if self.remote is None:
            raise ConfigError("llm.backend=openai needs llm.base_url (the server's /v1 URL) when the models load")
        return self.remote

    def close(self) -> None:
        """Stop the threads in order, each after its current call: the server's streams, the decode
        scheduler, then ASR and TTS (a reply in flight needs neither once the decoder stopped)."""
        if self.remote is not None:
            self.remote.close()
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
    )
    tts = PiperTTS(piper_path(cfg.models), cfg.tts.length_scale)
    llm = ReplyModel(cfg)
    remote = remote_replies(cfg, llm.token_ids)
    log.info("models loaded in %.1f s", time.perf_counter() - t)
    stack = Stack(asr, llm, tts, remote=remote)
    _loaded.append(stack)
    return stack
