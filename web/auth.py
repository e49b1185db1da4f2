"""Optional shared-secret access to a worker: `server.token_env` names the environment variable
that holds the secret. In: a request's path and headers (or `?token=` on `/ws`, which a browser
cannot give headers). Out: None to let it through, or a 401 response and one log line; no
session or model call happens before. `/healthz` and the page's files stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from voice.config import Config, ConfigError, secret_from_env
from voice.session_events import log_line

log = logging.getLogger(__name__)

PROTECTED = ("/ws", "/metrics", "/stats")  # what needs the secret when server.token_env is set


def server_token(cfg: Config) -> str | None:
    """The shared secret from the environment variable `server.token_env` names (None: no token)."""
    return secret_from_env(
        cfg.server.token_env,
        lambda name: ConfigError(
            f"server.token_env names {name}, which is not set: export {name}=<a long random secret>"
        ),
    )


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def token_refusal(connection: ServerConnection, request: Request, path: str, token: str | None) -> Response | None:
    """401 for a protected path without the secret (None: let it through)."""
    if token is None or path not in PROTECTED:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    if not given and path == "/ws":  # a browser cannot set headers on a websocket
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
    if given and hmac.compare_digest(given.encode(), token.encode()):
        return None
    peer = connection.remote_address[0] if connection.remote_address else None
    log.warning(log_line("unauthorized", path=path, token="wrong" if given else "missing", peer=peer))
    response = connection.respond(HTTPStatus.UNAUTHORIZED, "a token is needed: Authorization: Bearer <token>\n")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def warn_if_exposed(host: str, port: int, token: str | None) -> None:
    """A warning when a worker without a token listens beyond this machine."""
    if token is None and not is_loopback(host):
        log.warning(
            "serving on %s without a token: anyone who can reach port %s can talk to the assistant and read "
            "/metrics and /stats; set server.token_env (README: When something goes wrong)",
            host or "every address",
            port,
        )
