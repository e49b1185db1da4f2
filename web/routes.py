"""The plain GET routes of `voice serve`: `/healthz`, `/metrics`, `/stats` and the page's files.

In: a path and the server's state. Out: an HTTP response — `/healthz` 200 once the models are
loaded and below `server.max_sessions`, else 503 with the reason; `/metrics` Prometheus text;
`/stats` JSON totals; `/` and `/static/…` files from `web/static` (nothing outside it); else 404.
"""

from __future__ import annotations

import json
import mimetypes
from http import HTTPStatus
from pathlib import Path
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from web.metrics import CONTENT_TYPE

STATIC = Path(__file__).resolve().parent / "static"


class Served(Protocol):
    """What the routes read of the server (`web.server.VoiceServer`)."""

    sessions: dict
    stack: object | None

    @property
    def max_sessions(self) -> int: ...

    def readiness(self): ...

    def metrics_text(self) -> bytes: ...

    def stats(self) -> dict: ...


def get_response(server: Served, connection: ServerConnection, path: str) -> Response:
    """The response to a plain GET of `path`."""
    if path == "/healthz":
        state = server.readiness()
        body = (
            json.dumps(
                {
                    "ready": state.ready,
                    "reason": state.reason,
                    "sessions": len(server.sessions),
                    "max_sessions": server.max_sessions,
                }
            )
            + "\n"
        )
        return connection.respond(state.status, body)
    if path == "/metrics":
        return _response(server.metrics_text(), CONTENT_TYPE)
    if path == "/stats":
        if server.stack is None:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "loading\n")
        return connection.respond(HTTPStatus.OK, json.dumps(server.stats()) + "\n")
    name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
    file = (STATIC / name).resolve()
    if STATIC not in file.parents or not file.is_file():
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return _response(file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream")


def _response(body: bytes, content_type: str) -> Response:
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")]
    )
    return Response(200, "OK", headers, body)
