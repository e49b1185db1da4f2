"""A scripted OpenAI-compatible server on loopback (real HTTP): the chat stream and the model list,
each able to fail, for the tests of the `openai` backend and of the commands that use it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = ["Paris", " is", " the", " capital", " of", " France", "."]
SERVER_THREAD = "fake-openai"  # the name of every thread the server starts (tests count the others)


class _Server(ThreadingHTTPServer):
    """One daemon thread per request, named `SERVER_THREAD`."""

    def process_request(self, request, client_address):
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name=SERVER_THREAD, daemon=True
        )
        thread.start()


class ChatServer:
    """`POST /v1/chat/completions` streaming `words` as server-sent events (or failing with `status`);
    `GET /v1/models` listing `served` (or failing with `models_status`)."""

    def __init__(self, words=REPLY, status=200, gate=None, served=("default", "smol"), models_status=200):
        self.words, self.status, self.gate = words, status, gate
        self.served, self.models_status = served, models_status
        self.keys: list[str | None] = []  # the Authorization header of each GET /v1/models
        self.requests: list[dict] = []
        self.sent = 0
        self.disconnected = threading.Event()
        self.finished = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.keys.append(self.headers.get("Authorization"))
                if self.path != "/v1/models" or server.models_status != 200:
                    self.send_response(404 if self.path != "/v1/models" else server.models_status)
                    self.end_headers()
                    return
                body = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in server.served]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

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

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, name=SERVER_THREAD, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url() -> str:
    """The /v1 URL of a port nothing listens on (the connection is refused)."""
    srv = ChatServer()
    srv.close()
    return srv.url
