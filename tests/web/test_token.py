"""The optional shared secret (`server.token_env`) on a real `VoiceServer` (scripted sessions, no
models) over loopback: `/ws` needs it as a bearer header or `?token=`, `/metrics` and `/stats` as
the header, `/healthz` never; a refused request is logged and never starts a session."""

import asyncio
import json
import logging
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from scripted import ScriptedSession, serving
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voice.config import ConfigError, load_config
from web.client import open_session
from web.server import VoiceServer

SECRET = "s3cret-Token_42"
TOKEN_ENV = "server.token_env=VOICE_TEST_TOKEN"
START = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}


def get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def ws_status(url: str, headers: dict | None = None) -> int:
    """101 and a `ready` session, or the handshake's HTTP status."""
    try:
        ws = await connect(url, additional_headers=headers)
    except InvalidStatus as err:
        return err.response.status_code
    await ws.send(json.dumps(START))
    assert json.loads(await ws.recv())["type"] == "ready"
    await ws.close()
    return 101


def test_with_a_token_only_its_holders_get_sessions_metrics_and_stats(monkeypatch, caplog):
    monkeypatch.setenv("VOICE_TEST_TOKEN", SECRET)
    bearer = {"Authorization": f"Bearer {SECRET}"}
    sessions = []

    def counted(*args, **kwargs):
        sessions.append(args)
        return ScriptedSession(*args, **kwargs)

    async def main():
        async with serving(TOKEN_ENV) as (app, url):
            app.session_factory = counted
            ws = url.replace("http://", "ws://") + "ws"
            with caplog.at_level(logging.WARNING, logger="web.auth"):
                refused = [
                    await ws_status(ws),
                    await ws_status(ws, {"Authorization": "Bearer wrong"}),
                    await ws_status(ws + "?token=wrong"),
                ]
                assert refused == [401, 401, 401] and sessions == []  # no session: nothing reached a model
                for path in ("metrics", "stats"):
                    assert await asyncio.to_thread(get, url + path) == 401
                    assert await asyncio.to_thread(get, url + path + "?token=" + SECRET) == 401  # the header only
                    assert await asyncio.to_thread(get, url + path, bearer) == 200
            lines = [r.getMessage() for r in caplog.records if "event=unauthorized" in r.getMessage()]
            assert lines[:3] == [
                "event=unauthorized path=/ws token=missing peer=127.0.0.1",
                "event=unauthorized path=/ws token=wrong peer=127.0.0.1",
                "event=unauthorized path=/ws token=wrong peer=127.0.0.1",
            ]
            assert len(lines) == 7
            assert await asyncio.to_thread(get, url + "healthz") == 200  # the balancer's check needs none
            assert await ws_status(ws, bearer) == 101
            assert await ws_status(ws + "?token=" + SECRET) == 101  # the page's way
            client = await open_session(ws, token=SECRET, tries=1)  # what talk/soak --token-env send
            await client.close()
            assert len(sessions) == 3

    asyncio.run(main())


def test_without_a_token_everything_stays_open():
    async def main():
        async with serving() as (app, url):
            assert await ws_status(url.replace("http://", "ws://") + "ws") == 101
            assert await asyncio.to_thread(get, url + "metrics") == 200

    asyncio.run(main())


def test_a_token_variable_that_is_not_set_stops_the_server_with_what_to_do(monkeypatch):
    monkeypatch.delenv("VOICE_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="server.token_env names VOICE_TEST_TOKEN, which is not set: export"):
        VoiceServer(load_config(None, [TOKEN_ENV]))


@pytest.mark.parametrize(
    "host, token, warned",
    [("0.0.0.0", False, True), ("192.0.2.7", False, True), ("0.0.0.0", True, False), ("127.0.0.1", False, False)],
)
def test_binding_beyond_loopback_without_a_token_warns(host, token, warned, monkeypatch, caplog):
    import web.server

    async def serve(*args, **kwargs):  # nothing is bound: the warning comes before
        raise OSError(99, "not bound in this test")

    monkeypatch.setattr(web.server, "serve", serve)
    monkeypatch.setenv("VOICE_TEST_TOKEN", SECRET)
    app = VoiceServer(load_config(None, [TOKEN_ENV] if token else []), SimpleNamespace())
    with caplog.at_level(logging.WARNING, logger="web.auth"), pytest.raises(web.server.ListenError):
        asyncio.run(app.serve(host, 8765))
    said = [r.getMessage() for r in caplog.records if "without a token" in r.getMessage()]
    assert bool(said) == warned
    if warned:
        assert said[0].startswith(f"serving on {host} without a token: anyone who can reach port 8765")
