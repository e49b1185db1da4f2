"""`/healthz`, `/metrics` and the SIGTERM drain of the real `VoiceServer` over scripted sessions (no models)."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scripted import serving
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voice.session_events import Speech, Transcript, TurnEnd, TurnFailed, VadState
from voice.turns import TurnMetrics
from web.drain import TurnTracker, may_close, readiness
from web.protocol import ErrorReport

START = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}
TIMEOUT_S = 30  # generous: the assertions are about what happens, not how fast


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


async def session(url: str):
    ws = await connect(url.replace("http://", "ws://") + "ws")
    await ws.send(json.dumps(START))
    assert json.loads(await ws.recv())["type"] == "ready"
    return ws


async def until(ws, kind: str) -> list:
    seen = []
    while True:
        msg = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        seen.append(msg if isinstance(msg, bytes) else json.loads(msg))
        if isinstance(seen[-1], dict) and seen[-1]["type"] == kind:
            return seen


def metric(text: str, name: str, labels: dict | None = None) -> float:
    """One sample's value from Prometheus text (parsed with prometheus_client's parser)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    raise KeyError(name)


# ---- pure rules ----------------------------------------------------------------------------
def test_a_turn_runs_from_speech_start_or_text_to_turn_end_or_an_empty_final():
    t = TurnTracker()
    assert not t.busy
    t.sent(VadState(Speech.START, 1.0))
    t.sent(Transcript("what is", False, 1.1))
    t.sent(VadState(Speech.ENDPOINT, 1.2))
    assert t.busy
    t.sent(TurnEnd(TurnMetrics()))
    assert not t.busy
    t.received_text_turn()
    assert t.busy
    t.sent(TurnFailed("turn_failed", "x"))
    assert not t.busy
    t.sent(VadState(Speech.START, 2.0))
    t.sent(Transcript("", True, 2.1))  # a cough: no reply follows
    assert not t.busy
    t.sent(VadState(Speech.START, 3.0))
    t.sent(ErrorReport("bad_frame", "x"))  # a bad frame does not end the turn
    assert t.busy


def test_a_session_closes_only_at_a_boundary_with_every_event_sent():
    idle = TurnTracker()
    assert may_close(idle, session_idle=True, events_waiting=0)
    assert not may_close(idle, session_idle=True, events_waiting=1)
    assert not may_close(idle, session_idle=False, events_waiting=0)
    busy = TurnTracker()
    busy.received_text_turn()
    assert not may_close(busy, session_idle=True, events_waiting=0)


@pytest.mark.parametrize(
    "loaded, draining, sessions, reason",
    [
        (True, False, 0, "ready"),
        (False, False, 0, "loading"),
        (True, False, 8, "full"),
        (True, True, 0, "draining"),
        (False, True, 0, "draining"),
    ],
)
def test_readiness(loaded, draining, sessions, reason):
    state = readiness(loaded, draining, sessions, max_sessions=8)
    assert state.reason == reason and state.ready == (reason == "ready")
    assert state.status == (200 if reason == "ready" else 503)


# ---- the server ----------------------------------------------------------------------------
def test_healthz_is_ready_only_loaded_and_below_the_session_cap():
    async def main():
        async with serving("server.max_sessions=2", loaded=False) as (app, url):
            status, body = await aget(url + "healthz")
            assert status == 503 and json.loads(body)["reason"] == "loading"
            with pytest.raises(InvalidStatus) as refused:  # no sessions before the models
                await connect(url.replace("http://", "ws://") + "ws")
            assert refused.value.response.status_code == 503
            from scripted import scripted_stack

            app.stack = scripted_stack()
            assert (await aget(url + "healthz"))[0] == 200
            a, b = await session(url), await session(url)
            status, body = await aget(url + "healthz")
            assert status == 503 and json.loads(body) == {
                "ready": False,
                "reason": "full",
                "sessions": 2,
                "max_sessions": 2,
            }
            await a.close()
            await b.close()
            while (await aget(url + "healthz"))[0] != 200:  # the handlers notice the closes
                await asyncio.sleep(0.05)

    asyncio.run(main())


def test_metrics_parse_and_count_turns_gaps_and_sessions():
    async def main():
        async with serving() as (app, url):
            ws = await session(url)
            for _ in range(3):
                await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
                await until(ws, "turn_end")
            status, text = await aget(url + "metrics")
            await ws.close()
            return status, text

    status, text = asyncio.run(main())
    assert status == 200
    assert metric(text, "voice_turn_gap_seconds_count") == 3
    assert metric(text, "voice_turn_gap_seconds_sum") == pytest.approx(3 * 0.3, abs=0.01)
    assert metric(text, "voice_turn_gap_seconds_bucket", {"le": "0.25"}) == 0
    assert metric(text, "voice_turn_gap_seconds_bucket", {"le": "0.5"}) == 3
    assert metric(text, "voice_turns_total", {"outcome": "answered"}) == 3
    assert metric(text, "voice_turn_draft_acceptance_count") == 3
    assert metric(text, "voice_sessions") == 1 and metric(text, "voice_sessions_opened_total") == 1
    assert metric(text, "voice_turns_in_progress") == 0 and metric(text, "voice_draining") == 0
    assert metric(text, "voice_queue_depth", {"stage": "asr"}) == 0
    assert metric(text, "voice_decode_tokens_total") == 8 and metric(text, "voice_decode_tokens_per_second") == 16


def test_drain_is_unready_at_once_finishes_the_running_turn_then_closes_with_1001():
    async def main():
        async with serving() as (app, url):
            busy, idle = await session(url), await session(url)
            app.stack.hold.set()  # the reply waits until the test lets it go
            await busy.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
            await until(busy, "transcript")
            assert metric((await aget(url + "metrics"))[1], "voice_turns_in_progress") == 1
            app.begin_drain()
            status, body = await aget(url + "healthz")
            assert status == 503 and json.loads(body)["reason"] == "draining"
            with pytest.raises(InvalidStatus) as refused:  # a new session goes elsewhere
                await connect(url.replace("http://", "ws://") + "ws")
            assert refused.value.response.status_code == 503
            with pytest.raises(ConnectionClosed) as closed:  # the idle session goes at once
                await asyncio.wait_for(idle.recv(), TIMEOUT_S)
            assert closed.value.rcvd.code == 1001
            assert app.sessions and not app.stopped.is_set()  # the busy one is still being answered
            app.stack.hold.clear()
            seen = await until(busy, "turn_end")
            assert any(isinstance(m, bytes) for m in seen), "the reply audio came before the close"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(busy.recv(), TIMEOUT_S)
            assert closed.value.rcvd.code == 1001
            await asyncio.wait_for(app.stopped.wait(), TIMEOUT_S)
            text = app.metrics.render().decode()
            assert metric(text, "voice_sessions_going_away_total") == 2
            assert metric(text, "voice_sessions_refused_total", {"reason": "draining"}) == 1
            assert metric(text, "voice_turn_gap_seconds_count") == 1

    asyncio.run(main())


def test_drain_timeout_closes_a_turn_that_does_not_end():
    async def main():
        async with serving("server.drain_timeout_s=0.5") as (app, url):
            ws = await session(url)
            app.stack.hold.set()  # never released
            await ws.send(json.dumps({"type": "text", "text": "Tell me a long story."}))
            await until(ws, "transcript")
            app.begin_drain()
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            assert closed.value.rcvd.code == 1001
            await asyncio.wait_for(app.stopped.wait(), TIMEOUT_S)

    asyncio.run(main())


def test_bad_input_during_a_drain_gets_an_error_and_the_turn_still_finishes():
    async def main():
        async with serving() as (app, url):
            ws = await session(url)
            app.stack.hold.set()
            await ws.send(json.dumps({"type": "text", "text": "Hello?"}))
            await until(ws, "transcript")
            app.begin_drain()
            await ws.send("not json")
            assert (await until(ws, "error"))[-1]["code"] == "bad_json"
            app.stack.hold.clear()
            await until(ws, "turn_end")

    asyncio.run(main())
