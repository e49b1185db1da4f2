"""Replies from an OpenAI-compatible chat server (`llm.backend = "openai"`).

In: the conversation (chat messages). Out: a stream of `Span`s with the same interface as the
embedded decoder's (`voice.replies.Replies`), so the reply policy, chunker and TTS are
unchanged. The server (vLLM, SGLang, llama.cpp, Ollama, a hosted API) batches and speculates
on its side; this side streams `chat.completions` with the `openai` async client on the
caller's event loop and closes the HTTP stream when the reply is closed or its reader is
cancelled (barge-in, a dropped prediction, the reply policy's end), so the server stops
decoding it. The end-of-turn score still comes from the embedded model, which reads the
user's words, so turn-taking is the same with either backend.

Costs here: one HTTP stream per reply; each streamed delta is tokenized by the embedded
model's tokenizer (a span's `token_ids` are those local ids: the reply policy's budget is in
tokens, and the server's own ids are not streamed). `check_server` (one `GET /models`, before
the models load) refuses a server that is unreachable, refuses the key or does not serve
`llm.model`; a reply that fails later raises an `LLMServerError` whose one line names the
URL, the cause and the fix (`server_failure`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, AsyncIterator, Callable

import httpx

from decode.jobs import DecodeStats
from decode.scheduler import Priority
from decode.spans import Span
from voice.config import LLMConfig
from voice.errors import VoiceError

log = logging.getLogger(__name__)

CONTINUE_PROMPT = "Please go on."  # a chat API cannot extend an assistant message: "tell me more" asks
CHECK_TIMEOUT_S = 5.0  # the load-time GET /models (at most llm.timeout_s): a live server lists its models at once


class LLMServerError(VoiceError):
    """The OpenAI-compatible server is unreachable, refused the key or the model, or failed a request."""


def server_failure(err: BaseException, base_url: str, api_key_env: str) -> str:
    """One line naming the server's URL, the cause of `err` (an `httpx` or `openai` error) and the fix."""
    status = getattr(err, "status_code", None) or getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return (
            f"the LLM server at {base_url} refused the API key (HTTP {status}): put its key in the "
            f"environment variable {api_key_env} (llm.api_key_env)"
        )
    if status == 404:
        return (
            f"the LLM server at {base_url} answered 404 (not found): llm.base_url must be its /v1 URL "
            "and llm.model a model it serves"
        )
    if status is not None:
        return f"the LLM server at {base_url} failed the request (HTTP {status}): see the server's log"
    from openai import APITimeoutError

    if _caused_by(err, (TimeoutError, httpx.TimeoutException, APITimeoutError)):
        return (
            f"the LLM server at {base_url} did not answer (timed out): check that it is running and "
            "not overloaded, or raise llm.timeout_s"
        )
    cause = "connection refused" if _caused_by(err, (ConnectionRefusedError,)) else str(err)
    return f"cannot reach the LLM server at {base_url} ({cause}): start it, or fix llm.base_url"


def _caused_by(err: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    seen = 0
    while err is not None and seen < 10:  # the `openai` client wraps httpx's error, which wraps the OS's
        if isinstance(err, kinds):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def check_server(base_url: str, model: str, api_key: str | None, api_key_env: str, timeout_s: float) -> list[str]:
    """`GET {base_url}/models`: the served model ids; raises `LLMServerError` (one line: URL, cause,
    fix) when the server cannot be reached, refuses the key, or does not serve `model`."""
    url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/models", headers=headers, timeout=timeout_s)
        response.raise_for_status()
        served = [m["id"] for m in response.json().get("data", [])]
    except httpx.UnsupportedProtocol:
        raise LLMServerError(f"llm.base_url must be an http:// or https:// URL, got {base_url!r}") from None
    except httpx.HTTPError as err:
        raise LLMServerError(server_failure(err, url, api_key_env)) from None
    except (ValueError, TypeError, KeyError, AttributeError):
        raise LLMServerError(
            f"{url}/models did not answer an OpenAI model list: is llm.base_url the server's /v1 URL?"
        ) from None
    if served and model not in served:
        raise LLMServerError(
            f"the LLM server at {url} does not serve the model {model!r}: set llm.model to one of {', '.join(served)}"
        )
    return served


@dataclass
class RemoteJob:
    """What one streamed reply did (the pipeline reads `stats` as it reads a decoder job's)."""

    stats: DecodeStats = field(default_factory=DecodeStats)
    first_token_s: float | None = None  # time to the first streamed text, from the request
    finish_reason: str | None = None


def chat_messages(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """The request's messages: the system prompt first; a conversation ending in the assistant's
    (shortened) answer gets a user turn asking it to go on."""
    out = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(messages)
    if out and out[-1]["role"] == "assistant":
        out.append({"role": "user", "content": CONTINUE_PROMPT})
    return out


class RemoteReplies:
    """Streams replies from `base_url` (an OpenAI-compatible `/v1`) on the caller's event loop;
    the HTTP client pools its connections on the first loop that uses it (the process's)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenize: Callable[[str], list[int]],
        max_new_tokens: int = LLMConfig.max_new_tokens,
        temperature: float = LLMConfig.temperature,
        top_p: float = LLMConfig.top_p,
        system_prompt: str = LLMConfig.system_prompt,
        api_key_env: str = LLMConfig.api_key_env,
        timeout_s: float = LLMConfig.timeout_s,
        client: Any = None,
    ) -> None:
        if client is None:
            from openai import AsyncOpenAI

            # local servers take any key; a hosted API reads it from the environment, never the config
            client = AsyncOpenAI(
                base_url=base_url, api_key=os.environ.get(api_key_env) or "none", timeout=timeout_s, max_retries=0
            )
            if getattr(client, "_platform", "") is None:
                # it would read the OS (blocking file reads) in a worker thread before its first
                # request; read it here, at load, so that no reply starts a thread
                from openai._base_client import get_platform

                client._platform = get_platform()
        self.base_url, self.api_key_env = base_url, api_key_env
        self.client, self.model, self.tokenize = client, model, tokenize
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.system_prompt = system_prompt

    def reply(self, messages: list[dict[str, str]], priority: Priority | None = None) -> RemoteReply:
        """The server's reply to `messages`, streamed as it is read (`voice.replies.Replies`). The
        embedded scheduler's `priority` does not apply: the server schedules its own batch."""
        job = RemoteJob()
        return RemoteReply(job, self._spans(job, messages))

    async def _spans(self, job: RemoteJob, messages: list[dict[str, str]]) -> AsyncIterator[Span]:
        from openai import APIError

        start = time.perf_counter()
        try:
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=chat_messages(messages, self.system_prompt),
                stream=True,
                max_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
            )
            try:
                async for chunk in stream:
                    if (span := self._take(job, chunk, start)) is not None:
                        yield span
            finally:  # the connection closes, and the server stops decoding the reply
                await stream.close()
        except (asyncio.CancelledError, GeneratorExit):
            job.stats.cancelled = True
            raise
        except (APIError, httpx.HTTPError) as err:  # the server's failure, not a bug here
            raise LLMServerError(server_failure(err, self.base_url, self.api_key_env)) from err
        if job.finish_reason == "length":  # the server stopped at our cap
            job.stats.tokens = max(job.stats.tokens, self.max_new_tokens)
        yield Span((), "", 0, 0, time.perf_counter(), final=True)

    def _take(self, job: RemoteJob, chunk: Any, start: float) -> Span | None:
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        job.finish_reason = choice.finish_reason or job.finish_reason
        text = choice.delta.content if choice.delta is not None else None
        if not text:
            return None
        now = time.perf_counter()
        if job.first_token_s is None:
            job.first_token_s = now - start
        ids = tuple(self.tokenize(text))
        job.stats.tokens += len(ids)
        job.stats.steps += 1
        return Span(ids, text, 0, 0, now)


class RemoteReply:
    """One streamed reply (`voice.replies.ReplyStream`): the request goes out when the first span
    is asked for; closing it, or cancelling the task reading it, closes the HTTP stream."""

    def __init__(self, job: RemoteJob, spans: AsyncGenerator[Span, None]) -> None:
        self.job, self._spans = job, spans

    def __aiter__(self) -> RemoteReply:
        return self

    async def __anext__(self) -> Span:
        return await self._spans.__anext__()

    async def aclose(self) -> None:
        """Close the HTTP stream (if open): the server stops decoding the reply."""
        await self._spans.aclose()

    @property
    def stats(self) -> DecodeStats:
        """Streamed deltas and their tokens (the embedded tokenizer's count)."""
        return self.job.stats

    @property
    def capped(self) -> bool:
        """The server stopped at `max_new_tokens`."""
        return self.job.finish_reason == "length"
