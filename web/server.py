"""`voice serve`: the voice page over HTTP and the voice protocol over a websocket, one port.

In: browser or tool connections on 127.0.0.1 (by default). GET `/` and `/static/…` serve
the page from `web/static`; `/ws` upgrades to the protocol of `web/PROTOCOL.md`; `/healthz`
(200 once the models are loaded and below `server.max_sessions`, else 503) and `/metrics`
(Prometheus text) are for a balancer and a scraper. Out: per connection a `VoiceSession`
over the shared models (loaded once, after the port is bound): its events are sent as JSON
text messages and binary PCM. Models are shared through one worker thread each, so sessions
queue for the LLM. Bad input gets an `error` message and the session goes on. SIGTERM drains:
`/healthz` turns 503 at once, new sessions are refused, each session is closed with 1001
(going away) at its first turn boundary, and any left at `server.drain_timeout_s`. With
`server.token_env` set, `/ws`, `/metrics` and `/stats` need the secret (`web.auth`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voice.config import Config
from voice.errors import VoiceError
from voice.models import LLM_DIR, PIPER_VOICE, WHISPER_DIR
from voice.pipeline import VoiceSession
from voice.session_events import TurnEnd, TurnFailed, log_line
from voice.stack import Stack
from web.auth import server_token, token_refusal, warn_if_exposed
from web.drain import GOING_AWAY, TurnTracker, may_close, readiness
from web.metrics import ServerMetrics, rss_bytes
from web.protocol import AudioInput, ErrorReport, MessageType, ProtocolError, Ready, encode, parse_message, turn_text
from web.routes import get_response

log = logging.getLogger(__name__)

SOCKET_LIMIT_FACTOR = 16  # messages over 16 x server.max_message_bytes close the socket (1009)
DRAIN_POLL_S = 0.05  # how often a draining session checks for its turn boundary (a check is a few attribute reads)


class ListenError(VoiceError, OSError):
    """The port cannot be bound (in use, not allowed, no such address)."""


@dataclass
class _Connection:
    """One client's socket and the session it started."""

    sid: str
    ws: ServerConnection
    session: Any = None  # VoiceSession once `start` arrived
    audio_in: AudioInput | None = None
    sender: asyncio.Task | None = None
    turn: TurnTracker = field(default_factory=TurnTracker)

    def may_close(self) -> bool:
        """At a turn boundary with every event sent (a draining server closes it then)."""
        if self.session is None:
            return True
        return may_close(self.turn, self.session.idle, self.session.events.qsize())


class VoiceServer:
    """Serves the page, the health and metrics endpoints and voice sessions over the shared models.

    `stack` is None until the models are loaded (`/healthz` answers 503 "loading" meanwhile);
    `session_factory(stack, cfg, session_id=…)` makes a session (tests pass a scripted one).
    """

    def __init__(self, cfg: Config, stack: Stack | None = None, session_factory: Callable = VoiceSession) -> None:
        self.stack, self.cfg, self.session_factory = stack, cfg, session_factory
        self.token = server_token(cfg)
        self.sessions: dict[str, _Connection] = {}
        self.draining = False
        self.stopped = asyncio.Event()
        self.metrics = ServerMetrics(self.live_metrics)
        self._ids = itertools.count(1)
        self._drain_started = asyncio.Event()
        self._drainer: asyncio.Task | None = None

    # ---- HTTP ------------------------------------------------------------------
    def _origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: tools and the CLI send no Origin
            return True
        if origin in self.cfg.server.allowed_origins:
            return True
        return urlsplit(origin).netloc == request.headers.get("Host")

    @property
    def max_sessions(self) -> int:
        return self.cfg.server.max_sessions

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of this worker, read now."""
        return self.metrics.render()

    def readiness(self):
        """What `/healthz` answers now (see `web.drain.readiness`)."""
        return readiness(self.stack is not None, self.draining, len(self.sessions), self.cfg.server.max_sessions)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The token, origin and drain checks for `/ws`; health, metrics, stats and static files for plain GETs."""
        path = urlsplit(request.path).path
        if (refused := token_refusal(connection, request, path, self.token)) is not None:
            return refused
        if path == "/ws":
            if not self._origin_allowed(request):
                return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            if self.draining or self.stack is None:  # 503: the balancer retries on another worker
                reason = "draining" if self.draining else "loading"
                self.metrics.sessions_refused.labels(reason).inc()
                response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"worker {reason}; try again\n")
                response.headers["Retry-After"] = "1"
                return response
            return None
        return get_response(self, connection, path)

    def stats(self) -> dict:
        """Sessions, asyncio tasks, threads, resident memory, the decode scheduler's totals (steps,
        tokens, batch sizes) and the queues now: for soak tests and operators."""
        import threading

        return {
            "sessions": len(self.sessions),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "rss_bytes": rss_bytes(),
            "decode": self.stack.llm.scheduler.stats.as_dict(),
            "queues": self._queues(),
        }

    def live_metrics(self) -> dict:
        """What `/metrics` reads at scrape time: sessions, turns in progress, queues, decode totals."""
        live: dict = {
            "sessions": len(self.sessions),
            "draining": self.draining,
            "turns_in_progress": sum(c.turn.busy for c in self.sessions.values()),
        }
        if self.stack is not None:
            live["queues"] = self._queues()
            live["decode"] = self.stack.llm.scheduler.stats.as_dict()
        return live

    def _queues(self) -> dict:
        """Calls waiting for the ASR and TTS threads, and replies in progress."""
        return {
            "asr": self.stack.asr_worker.waiting(),
            "tts": self.stack.tts_worker.waiting(),
            "reply": sum(1 for c in self.sessions.values() if c.session is not None and c.session.replying),
        }

    def ready_message(self, sid: str) -> str:
        """The `ready` event: the session id, the reply audio's rate and the active configuration."""
        return encode(Ready(sid, self.stack.tts.rate_hz, self.active_config()))

    def active_config(self) -> dict:
        """What the page shows read-only: the models, drafter, controller, device and matmul layout."""
        models = self.cfg.models
        return {
            "llm": LLM_DIR if models.llm == "embedded" else models.llm,
            "drafter": self.cfg.decode.drafter,
            "controller": self.cfg.decode.controller,
            "device": self.cfg.llm.device,
            "dtype": self.cfg.llm.dtype,
            "linear_layout": getattr(self.stack.llm.target, "layout", None),
            "asr": WHISPER_DIR if models.asr == "embedded" else models.asr,
            "tts_voice": PIPER_VOICE.removesuffix(".onnx") if models.tts == "embedded" else models.tts,
        }

    # ---- websocket ---------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        """One client connection: the protocol's state machine, closed early by a drain."""
        if await self._refused(ws):
            return
        conn = _Connection(f"s{next(self._ids)}", ws)
        self.sessions[conn.sid] = conn
        self.metrics.sessions_opened.inc()
        watcher = asyncio.ensure_future(self._close_when_drained(conn))
        try:
            await self._serve_messages(conn)
        except ConnectionClosed:
            pass
        except Exception:  # never let one session's bug take the server down
            log.exception(log_line("session_failed", session=conn.sid))
            await _send_quietly(ws, ErrorReport("internal", "internal error; session closed"))
        finally:
            self.sessions.pop(conn.sid, None)
            watcher.cancel()
            if conn.session is not None:
                await conn.session.close()
            if conn.sender is not None:
                conn.sender.cancel()

    async def _refused(self, ws: ServerConnection) -> bool:
        """Full: `server_full` and 1013. Draining or loading (a handshake that raced the check): 1001."""
        if self.draining or self.stack is None:
            self.metrics.sessions_refused.labels("draining" if self.draining else "loading").inc()
            await ws.close(GOING_AWAY, "server going away: reconnect")
            return True
        if len(self.sessions) >= self.cfg.server.max_sessions:
            self.metrics.sessions_refused.labels("full").inc()
            full = f"the server is full ({self.cfg.server.max_sessions} sessions); try again later"
            await ws.send(encode(ErrorReport("server_full", full)))
            await ws.close(1013, "server full")
            return True
        return False

    async def _serve_messages(self, conn: _Connection) -> None:
        ws = conn.ws
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self.cfg.server.idle_timeout_s)
            except asyncio.TimeoutError:
                await ws.send(encode(ErrorReport("idle_timeout", "no message for too long; closing")))
                return
            try:
                if isinstance(message, bytes):
                    if conn.session is None or conn.audio_in is None:
                        raise ProtocolError("not_started", "send a `start` message before audio")
                    await conn.session.feed_audio(conn.audio_in.decode(message))
                elif await self._on_json(conn, parse_message(message)) is MessageType.STOP:
                    return
            except ProtocolError as err:
                await ws.send(encode(ErrorReport(err.code, str(err))))

    async def _on_json(self, conn: _Connection, msg: dict) -> MessageType | None:
        kind = msg["type"]
        if kind == MessageType.START:
            if conn.session is not None:
                raise ProtocolError("already_started", "the session has already started")
            conn.audio_in = AudioInput(msg, self.cfg.server.max_message_bytes)
            conn.session = self.session_factory(self.stack, self.cfg, session_id=conn.sid)
            conn.sender = asyncio.ensure_future(self._send_events(conn))
            await conn.ws.send(self.ready_message(conn.sid))
        elif conn.session is None and kind in (MessageType.TEXT, MessageType.INTERRUPT):
            raise ProtocolError("not_started", "send a `start` message first")
        elif kind == MessageType.TEXT:
            text = turn_text(msg)
            conn.turn.received_text_turn()
            await conn.session.user_text(text)
        elif kind == MessageType.INTERRUPT:
            await conn.session.interrupt()
        elif kind == MessageType.STOP:
            return MessageType.STOP
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}")
        return None

    async def _send_events(self, conn: _Connection) -> None:
        try:
            while True:
                event = await conn.session.events.get()
                await conn.ws.send(encode(event))
                conn.turn.sent(event)
                if isinstance(event, TurnEnd):
                    self.metrics.turn_ended(event.metrics.as_dict())
                elif isinstance(event, TurnFailed):
                    self.metrics.turns.labels("failed").inc()
        except ConnectionClosed:
            pass

    # ---- drain -------------------------------------------------------------------
    def begin_drain(self) -> None:
        """SIGTERM: unready at once, then close sessions at their turn boundaries; a second one stops now."""
        if self.draining:
            log.warning(log_line("drain_abort", sessions=len(self.sessions)))
            self.stopped.set()
            return
        self.draining = True
        log.warning(
            log_line(
                "drain_start",
                sessions=len(self.sessions),
                turns_in_progress=sum(c.turn.busy for c in self.sessions.values()),
                timeout_s=self.cfg.server.drain_timeout_s,
            )
        )
        self._drain_started.set()
        self._drainer = asyncio.ensure_future(self._drain())

    async def _close_when_drained(self, conn: _Connection) -> None:
        await self._drain_started.wait()
        while not conn.may_close():
            await asyncio.sleep(DRAIN_POLL_S)
        await self._going_away(conn)

    async def _going_away(self, conn: _Connection) -> None:
        self.metrics.sessions_going_away.inc()
        log.info(log_line("session_going_away", session=conn.sid, turn_in_progress=conn.turn.busy))
        await conn.ws.close(GOING_AWAY, "server going away: reconnect")

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.server.drain_timeout_s
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        left = list(self.sessions.values())
        await asyncio.gather(*(self._going_away(c) for c in left), return_exceptions=True)
        log.warning(log_line("drain_end", cut_sessions=len(left)))
        self.stopped.set()

    async def serve(
        self,
        host: str,
        port: int,
        load: Callable[[], Stack] | None = None,
        ready: Callable[[str], None] | None = None,
        listening: Callable[[str], None] | None = None,
    ) -> None:
        """Listen, load the models (`load()` in a thread, if given), then serve until `stopped`."""
        warn_if_exposed(host, port, self.token)
        try:
            server = await serve(
                self.handle,
                host,
                port,
                process_request=self.process_request,
                max_size=SOCKET_LIMIT_FACTOR * self.cfg.server.max_message_bytes,
                ping_interval=self.cfg.server.ping_interval_s,
                ping_timeout=self.cfg.server.ping_interval_s,
            )
        except OSError as err:
            raise ListenError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
        async with server:
            url = f"http://{host}:{next(iter(server.sockets)).getsockname()[1]}/"
            if listening:
                listening(url)
            if load is not None:
                self.stack = await asyncio.to_thread(load)
            if ready and not self.stopped.is_set():
                ready(url)
            await self.stopped.wait()


async def _send_quietly(ws: ServerConnection, event: ErrorReport) -> None:
    try:
        await ws.send(encode(event))
    except ConnectionClosed:
        pass


async def run_server(
    cfg: Config,
    host: str,
    port: int,
    load: Callable[[], Stack],
    ready: Callable[[str], None] | None = None,
    listening: Callable[[str], None] | None = None,
) -> None:
    """Serve until Ctrl-C (stop now: sessions closed with 1001) or SIGTERM (drain, then stop);
    `listening(url)` once bound, `ready(url)` once the models are loaded."""
    loop = asyncio.get_running_loop()
    app = VoiceServer(cfg)
    handlers = {signal.SIGINT: app.stopped.set, signal.SIGTERM: app.begin_drain}
    for sig, handler in handlers.items():
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await app.serve(host, port, load, ready, listening)
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
