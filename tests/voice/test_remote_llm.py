"""The OpenAI-compatible backend against a scripted chat server on loopback (real HTTP, real
`openai` client): streamed deltas become spans read on the caller's event loop, closing the
reply or cancelling its reader closes the stream, failures raise from the reply, and the
session picks the backend from `llm.backend`."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest
from fake_openai import REPLY, ChatServer, dead_url

from voice.config import Config, ConfigError, LLMConfig
from voice.remote_llm import CONTINUE_PROMPT, LLMServerError, RemoteReplies, chat_messages, check_server
from voice.stack import Stack, check_llm_server, remote_replies


@pytest.fixture
def server():
    srv = ChatServer()
    yield srv
    srv.close()


def replies(url, **kw):
    return RemoteReplies(
        url, "smol", lambda text: list(text.encode()), max_new_tokens=20, system_prompt="Be brief.", **kw
    )


def run(backend, messages, enough=lambda spans: False):
    """Read the reply on one event loop until it ends or `enough(spans)`; the reply, its spans and
    what it raised (or None)."""

    async def main():
        reply, spans, error = backend.reply(messages), [], None
        async with aclosing(reply):
            try:
                async for span in reply:
                    spans.append(span)
                    if enough(spans):
                        break
            except LLMServerError as err:
                error = err
        return reply, spans, error

    return asyncio.run(main())


def test_streamed_deltas_become_spans_in_order_and_the_request_carries_the_conversation(server):
    reply, spans, error = run(replies(server.url), [{"role": "user", "content": "Capital of France?"}])
    assert error is None
    assert "".join(s.text for s in spans) == "".join(REPLY) and spans[-1].final
    assert reply.stats.tokens == sum(len(w.encode()) for w in REPLY)  # local ids of each delta
    assert reply.job.first_token_s is not None and reply.job.finish_reason == "stop" and not reply.capped
    (request,) = server.requests
    assert request["stream"] is True and request["model"] == "smol" and request["max_tokens"] == 20
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]


def stalled_server() -> tuple[ChatServer, threading.Event]:
    """A server that stalls after its first delta until the gate opens, then writes 199 more."""
    gate = threading.Event()
    return ChatServer(words=["word"] * 200, gate=gate), gate


async def server_finished(srv: ChatServer, gate: threading.Event) -> None:
    """Open the gate and wait, with the loop still running, until the server stops writing."""
    gate.set()
    assert await asyncio.to_thread(srv.finished.wait, 30)


def test_closing_the_reply_closes_the_stream_so_the_server_stops_sending():
    srv, gate = stalled_server()

    async def main():
        reply, spans = replies(srv.url).reply([{"role": "user", "content": "Talk."}]), []
        async with aclosing(reply):
            async for span in reply:
                spans.append(span)
                break  # the reply policy has what it will speak
        await server_finished(srv, gate)  # the server goes on writing, into a connection the client closed
        return reply, spans

    try:
        reply, spans = asyncio.run(main())
        assert reply.stats.cancelled
        assert srv.sent < 200 and srv.disconnected.is_set()  # the server's writes failed: the client went
        assert [s.text for s in spans] == ["word"]
    finally:
        srv.close()


def test_cancelling_the_reader_while_the_server_is_silent_closes_the_stream():
    """A barge-in while the server sends nothing (a long prefill, a stall): the task reading the
    reply is cancelled, the connection closes, and no span comes after."""
    srv, gate = stalled_server()

    async def main():
        reply, spans = replies(srv.url).reply([{"role": "user", "content": "Talk."}]), []

        async def read():
            async with aclosing(reply):
                async for span in reply:
                    spans.append(span)
                    asyncio.get_running_loop().call_soon(reader.cancel)  # lands while it awaits the next

        reader = asyncio.ensure_future(read())
        with pytest.raises(asyncio.CancelledError):
            await reader
        await server_finished(srv, gate)
        return reply, spans

    try:
        reply, spans = asyncio.run(main())
        assert reply.stats.cancelled and srv.disconnected.is_set() and srv.sent < 200
        assert [s.text for s in spans] == ["word"]
    finally:
        srv.close()


def test_a_server_error_raises_from_the_reply_as_one_line_naming_the_url():
    srv = ChatServer(status=503)
    try:
        _, spans, error = run(replies(srv.url), [{"role": "user", "content": "Hi"}])
        assert isinstance(error, LLMServerError)
        assert str(error) == f"the LLM server at {srv.url} failed the request (HTTP 503): see the server's log"
        assert error.__cause__ is not None  # the traceback --debug shows
        assert not spans
    finally:
        srv.close()


def test_a_refused_connection_raises_from_the_reply_as_one_line_naming_the_url():
    url = dead_url()
    _, _, error = run(replies(url, timeout_s=5), [{"role": "user", "content": "Hi"}])
    assert isinstance(error, LLMServerError)
    assert str(error) == f"cannot reach the LLM server at {url} (connection refused): start it, or fix llm.base_url"


def silent_url():
    """A port that accepts connections and never answers."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def checked(url, model="default", key=None, timeout_s=5.0):
    try:
        return check_server(url, model, key, "VOICE_TEST_KEY", timeout_s)
    except LLMServerError as err:
        return str(err)


def test_the_load_time_check_names_the_url_the_cause_and_the_fix():
    srv = ChatServer(served=("smol",))
    sock, silent = silent_url()
    try:
        assert checked(srv.url, "smol", key="k1") == ["smol"]
        assert srv.keys == ["Bearer k1"]  # the key the replies will send
        assert checked(srv.url, "default") == (
            f"the LLM server at {srv.url} does not serve the model 'default': set llm.model to one of smol"
        )
        srv.models_status = 401
        assert checked(srv.url, "smol") == (
            f"the LLM server at {srv.url} refused the API key (HTTP 401): put its key in the environment "
            "variable VOICE_TEST_KEY (llm.api_key_env)"
        )
        assert "answered 404" in checked(srv.url.removesuffix("/v1"), "smol")  # base_url without /v1
        url = dead_url()
        assert (
            checked(url) == f"cannot reach the LLM server at {url} (connection refused): start it, or fix llm.base_url"
        )
        assert checked(silent, timeout_s=0.2) == (
            f"the LLM server at {silent} did not answer (timed out): check that it is running and not "
            "overloaded, or raise llm.timeout_s"
        )
        assert checked("127.0.0.1:8080/v1") == (
            "llm.base_url must be an http:// or https:// URL, got '127.0.0.1:8080/v1'"
        )
    finally:
        sock.close()
        srv.close()


def test_only_the_openai_backend_checks_its_server_when_the_models_load(monkeypatch):
    url = dead_url()
    check_llm_server(LLMConfig(backend="local", base_url=url))  # the local backend never calls it
    with pytest.raises(LLMServerError, match="connection refused"):
        check_llm_server(LLMConfig(backend="openai", base_url=url))
    import voice.stack

    monkeypatch.setattr(voice.stack, "WhisperASR", lambda *a: pytest.fail("models loaded before the check"))
    with pytest.raises(LLMServerError, match="cannot reach"):
        voice.stack.load_stack(Config(llm=LLMConfig(backend="openai", base_url=url)))


def test_continuing_an_answer_asks_the_server_to_go_on():
    msgs = chat_messages(
        [{"role": "user", "content": "Tell me about Mars."}, {"role": "assistant", "content": "Mars is red."}], ""
    )
    assert msgs[-1] == {"role": "user", "content": CONTINUE_PROMPT} and msgs[0]["role"] == "user"


def test_the_backend_is_chosen_by_config_and_misconfiguration_is_a_clear_error(server):
    remote = replies(server.url)
    stack = Stack(asr=None, llm="local-model", tts=None, remote=remote)
    assert stack.replies(LLMConfig()) == "local-model"
    assert stack.replies(LLMConfig(backend="openai")) is remote
    with pytest.raises(ConfigError, match="local or openai"):
        stack.replies(LLMConfig(backend="vllm"))
    with pytest.raises(ConfigError, match="base_url"):
        Stack(asr=None, llm="local-model", tts=None).replies(LLMConfig(backend="openai"))


def test_remote_replies_are_built_from_config_only_when_a_url_is_set():
    from voice.config import Config

    tok = lambda text: [1, 2]  # noqa: E731
    assert remote_replies(Config(), tok) is None
    with pytest.raises(ConfigError, match="base_url"):
        remote_replies(Config(llm=LLMConfig(backend="openai")), tok)
    built = remote_replies(Config(llm=LLMConfig(base_url="http://127.0.0.1:9/v1", model="m")), tok)
    assert built.model == "m" and built.tokenize("x") == [1, 2]


@pytest.mark.slow
def test_a_session_with_the_openai_backend_speaks_the_servers_reply(stack, server):
    """A typed turn through the whole pipeline: the server's words are shown, spoken and remembered."""
    import asyncio
    import dataclasses

    from voice.config import load_config
    from voice.pipeline import VoiceSession
    from voice.session_events import AudioOut, ReplyText, TurnEnd, TurnFailed

    cfg = load_config(None, ["llm.backend=openai", f"llm.base_url={server.url}"])
    remote = remote_replies(cfg, stack.llm.token_ids)
    openai_stack = dataclasses.replace(stack, remote=remote)

    async def main():
        session = VoiceSession(openai_stack, cfg)
        await session.user_text("What is the capital of France?")
        events = []
        while not isinstance(events[-1] if events else None, (TurnEnd, TurnFailed)):
            events.append(await asyncio.wait_for(session.events.get(), 60))
        history = list(session.conversation.turns)
        await session.close()
        return events, history

    events, history = asyncio.run(main())
    end = events[-1]
    assert isinstance(end, TurnEnd), end
    assert "".join(e.text for e in events if isinstance(e, ReplyText)).strip() == "".join(REPLY)
    assert any(isinstance(e, AudioOut) for e in events) and end.metrics.reply_audio_s > 0.5
    assert end.metrics.as_dict()["llm_ttft_ms"] is not None
    assert history == [("What is the capital of France?", "".join(REPLY))]
    assert server.requests[0]["messages"][-1] == {"role": "user", "content": "What is the capital of France?"}


@pytest.mark.slow
def test_llama_cpp_servers_openai_api_on_the_embedded_gguf_answers_and_a_cancel_stops_it():
    """A real OpenAI-compatible server: llama-cpp-python's, on the embedded SmolLM2 GGUF."""
    pytest.importorskip(
        "llama_cpp.server",
        reason="llama-cpp-python[server] is not installed "
        "(optional: `make llama-server` builds it from source, ~55 min on 2 busy cores)",
    )
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from voice.models import LLM_GGUF, LLM_PACKAGE, package_dir

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gguf = package_dir(LLM_PACKAGE) / LLM_GGUF
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "llama.cpp server did not start"
                time.sleep(1)
        backend = RemoteReplies(
            url,
            "smollm2",
            lambda text: list(text.encode()),
            max_new_tokens=40,
            system_prompt="Answer in one short sentence.",
            timeout_s=120,
        )
        reply, spans, error = run(backend, [{"role": "user", "content": "What is the capital of France?"}])
        assert error is None, error
        assert "".join(s.text for s in spans).strip() and reply.job.first_token_s is not None
        long = RemoteReplies(url, "smollm2", lambda text: list(text.encode()), max_new_tokens=400, timeout_s=120)
        reply, _, error = run(
            long,
            [{"role": "user", "content": "Count from one to two hundred in words."}],
            lambda spans: len(spans) >= 3,
        )
        assert error is None and reply.stats.cancelled
        assert reply.job.finish_reason is None  # it never reached the model's end or the cap
    finally:
        proc.terminate()
        proc.wait(30)
