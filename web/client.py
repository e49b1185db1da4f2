"""A protocol client: opens a session on a running server and says why one ended.

In: a `ws://…/ws` URL (and the server's shared secret, if it has one). Out: an open websocket
after the server's `ready`, or the error the caller acts on. `open_session` retries a worker
that answers 503 (loading or draining) or drops the handshake. A worker that drains closes the
session with 1001 (going away): `closed_error` turns that into `ServerGoingAwayError` and the caller
opens a new session (through a balancer, on another worker) and goes on. A connection that
drops without a close (a worker or balancer killed) is `SessionDroppedError` (the same remedy); when
nothing accepts connections any more `open_session` raises `ServerLostError`.
"""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from audio.frames import SAMPLE_RATE_HZ
from voice.errors import VoiceError
from web.drain import GOING_AWAY
from web.protocol import Decoder, ErrorReport, MessageType, ProtocolError, Ready

START = {"type": MessageType.START, "sample_rate": SAMPLE_RATE_HZ, "format": "pcm_s16le", "channels": 1}


OPEN_TRIES = 20  # a fleet's balancer needs a health check or two to take a draining worker out
OPEN_RETRY_DELAY_S = 0.5


class ServerError(VoiceError, RuntimeError):
    """The server answered with an `error` event."""


class ServerGoingAwayError(ServerError):
    """The server closed the session with 1001 (it is draining): open a new session and go on."""


class SessionDroppedError(ServerError):
    """The connection ended without a close (the worker or the balancer died): open a new session
    (through a balancer, on another worker) and go on."""


class ServerLostError(ServerError):
    """Nothing accepts connections at the URL any more (the server or the balancer went away)."""


def is_going_away(err: BaseException) -> bool:
    """A socket closed by the server with 1001 (going away)."""
    return isinstance(err, ConnectionClosed) and err.rcvd is not None and err.rcvd.code == GOING_AWAY


async def open_session(
    url: str, timeout_s: float = 60.0, tries: int = OPEN_TRIES, token: str | None = None
) -> ClientConnection:
    """Connect and start a session; returns the open websocket after `ready`. A 503 (worker loading
    or draining), a refused connection, a 1001 or a dropped connection before `ready` is retried
    `tries` times; `ServerLostError` when the last try's connection was refused too. `token`: the
    server's shared secret (`server.token_env`), sent as `Authorization: Bearer`."""
    for attempt in range(tries):
        try:
            return await _start_session(url, timeout_s, token)
        except (InvalidHandshake, OSError, ServerGoingAwayError, SessionDroppedError) as err:
            if isinstance(err, InvalidStatus) and err.response.status_code != 503:
                raise ServerError(f"server refused the session: HTTP {err.response.status_code}") from None
            if attempt == tries - 1 and isinstance(err, OSError):
                raise ServerLostError(f"the server at {url} went away ({err}); is it still running?") from None
            if attempt == tries - 1:
                raise ServerError(f"no worker took the session after {tries} tries: {err}") from None
            await asyncio.sleep(OPEN_RETRY_DELAY_S)
    raise AssertionError("unreachable")


async def _start_session(url: str, timeout_s: float, token: str | None = None) -> ClientConnection:
    ws = await connect(url, max_size=None, additional_headers=auth_headers(token))
    try:
        await ws.send(json.dumps(START))
        ready = Decoder().decode(await asyncio.wait_for(ws.recv(), timeout_s))
    except ConnectionClosed as err:
        if is_going_away(err):
            raise ServerGoingAwayError("the worker went away before the session started") from None
        if is_dropped(err):
            raise SessionDroppedError("the connection dropped before the session started") from None
        raise
    except ProtocolError as err:
        await ws.close()
        raise ServerError(f"the server's answer to `start` is not the protocol's: {err}") from None
    if not isinstance(ready, Ready):
        await ws.close()
        why = f"{ready.code}: {ready.message}" if isinstance(ready, ErrorReport) else repr(ready)
        raise ServerError(f"server did not start the session: {why}")
    return ws


def auth_headers(token: str | None) -> dict[str, str]:
    """The header that carries the server's shared secret (none without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def closed_error(err: ConnectionClosed) -> Exception:
    """A closed socket as the error the caller acts on: `ServerGoingAwayError` for 1001, `SessionDroppedError`
    for a connection that ended without a close frame."""
    if is_going_away(err):
        return ServerGoingAwayError(
            "the worker is draining (1001 going away): open a new session and say the turn again"
        )
    if is_dropped(err):
        return SessionDroppedError("the connection dropped without a close (the server died?): open a new session")
    return err


def is_dropped(err: BaseException) -> bool:
    """A socket that ended without a close frame from the server (its process or the balancer died)."""
    return isinstance(err, ConnectionClosed) and err.rcvd is None
