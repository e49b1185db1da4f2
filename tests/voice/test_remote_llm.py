"""The OpenAI-compatible backend against a scripted chat server on loopback (real HTTP, real
`openai` client): streamed deltas become spans, a cancel closes the stream, failures reach the
ticket, and the session picks the backend from `llm.backend`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from voice.config import ConfigError, LLMConfig
from voice.remote_llm import CONTINUE_PROMPT, RemoteReplies, chat_messages
from voice.stack import Stack, remote_replies

REPLY = ["Paris", " is", " the", " capital", " of", " France", "."]


class ChatServer:
    """`POST /v1/chat/completions` streaming `words` as server-sent events (or failing with `status`)."""

    def __init__(self, words=REPLY, status=200, gate: threading.Event | None = None):
        self.words, self.status, self.gate = words, status, gate
        self.requests: list[dict] = []
        self.sent = 0
        self.disconnected = threading.Event()
        self.finished = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if server.status != 200:
                    self.send_response(server.status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": "model not loaded"}}).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                try:
                    for i, word in enumerate(server.words):
                        last = i == len(server.words) - 1
                        self._event(
                            {
                                "choices": [
                                    {"index": 0, "delta": {"content": word}, "finish_reason": "stop" if last else None}
                                ]
                            }
                        )
                        server.sent += 1
                        if server.gate is not None and i == 0:
                            server.gate.wait(30)  # hold the stream after its first delta
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()
                finally:
                    server.finished.set()

            def _event(self, delta):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", **delta}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ChatServer()
    yield srv
    srv.close()


def replies(url, **kw):
    return RemoteReplies(
        url, "smol", lambda text: list(text.encode()), max_new_tokens=20, system_prompt="Be brief.", **kw
    )


def run(backend, messages, cancel=None, on_span=None):
    spans, ended = [], threading.Event()

    def emit(span):
        spans.append(span)
        if on_span:
            on_span(span)

    ticket = backend.submit_reply(
        messages, cancel, emit, lambda t: ended.set(), urgent=lambda: True, paused=lambda: False
    )
    assert ended.wait(30), "the reply never ended"
    return ticket, spans


def test_streamed_deltas_become_spans_in_order_and_the_request_carries_the_conversation(server):
    ticket, spans = run(replies(server.url), [{"role": "user", "content": "Capital of France?"}])
    assert ticket.error is None
    assert "".join(s.text for s in spans) == "".join(REPLY) and spans[-1].final
    assert ticket.job.stats.tokens == sum(len(w.encode()) for w in REPLY)  # local ids of each delta
    assert ticket.job.first_token_s is not None and ticket.job.finish_reason == "stop"
    (request,) = server.requests
    assert request["stream"] is True and request["model"] == "smol" and request["max_tokens"] == 20
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]


def test_a_cancel_closes_the_stream_so_the_server_stops_sending():
    gate = threading.Event()
    srv = ChatServer(words=["word"] * 200, gate=gate)
    cancel = threading.Event()
    try:
        # the server stalls after its first delta; the cancel comes during the stall
        ticket, spans = run(
            replies(srv.url), [{"role": "user", "content": "Talk."}], cancel, on_span=lambda span: cancel.set()
        )
        gate.set()  # the server goes on writing, into a connection the client closed
        assert srv.finished.wait(30)
        assert ticket.job.stats.cancelled and ticket.error is None
        assert srv.sent < 200 and srv.disconnected.is_set()  # the server's writes failed: the client went
        assert [s.text for s in spans if s.text] == ["word"]
    finally:
        srv.close()


def test_a_server_error_reaches_the_ticket_and_the_reply_ends():
    srv = ChatServer(status=503)
    try:
        ticket, spans = run(replies(srv.url), [{"role": "user", "content": "Hi"}])
        assert ticket.error is not None and "503" in str(ticket.error)
        assert not spans
    finally:
        srv.close()


def test_a_refused_connection_reaches_the_ticket():
    srv = ChatServer()
    url = srv.url
    srv.close()
    ticket, _ = run(replies(url, timeout_s=5), [{"role": "user", "content": "Hi"}])
    assert ticket.error is not None


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
    from voice.session_events import AudioOut, ReplyText, TurnEnd, TurnError

    cfg = load_config(None, ["llm.backend=openai", f"llm.base_url={server.url}"])
    remote = remote_replies(cfg, stack.llm.token_ids)
    openai_stack = dataclasses.replace(stack, remote=remote)

    async def main():
        session = VoiceSession(openai_stack, cfg)
        await session.user_text("What is the capital of France?")
        events = []
        while not isinstance(events[-1] if events else None, (TurnEnd, TurnError)):
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
        ticket, spans = run(backend, [{"role": "user", "content": "What is the capital of France?"}])
        assert ticket.error is None, ticket.error
        assert "".join(s.text for s in spans).strip() and ticket.job.first_token_s is not None
        long = RemoteReplies(url, "smollm2", lambda text: list(text.encode()), max_new_tokens=400, timeout_s=120)
        cancel, seen = threading.Event(), []
        ticket, _ = run(
            long,
            [{"role": "user", "content": "Count from one to two hundred in words."}],
            cancel,
            on_span=lambda span: (seen.append(span), len(seen) >= 3 and cancel.set()),
        )
        assert ticket.error is None and ticket.job.stats.cancelled
        assert ticket.job.finish_reason is None  # it never reached the model's end or the cap
    finally:
        proc.terminate()
        proc.wait(30)
