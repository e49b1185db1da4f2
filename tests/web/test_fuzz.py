"""Hypothesis-driven protocol fuzz against a live server (slow): no crash, no internal error."""

import asyncio
import json
import time
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from guards import HANG_GUARD_S

pytestmark = pytest.mark.slow
# A session is gone milliseconds after its socket closes; one still counted this long after is
# leaked. Shorter than HANG_GUARD_S so that hypothesis can shrink a leak within CI's time.
SESSION_GONE_S = 30.0
SENT = {"messages": 0}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=8,
)
types = st.sampled_from(["start", "text", "interrupt", "stop", "dance", "", "START"]) | st.text(max_size=10)
json_messages = st.builds(
    lambda t, extra: json.dumps({"type": t, **extra}),
    types,
    st.dictionaries(st.sampled_from(["sample_rate", "format", "channels", "text", "x"]), json_values, max_size=4),
)
starts = st.builds(
    lambda r, f, c: json.dumps({"type": "start", "sample_rate": r, "format": f, "channels": c}),
    st.sampled_from([8000, 16000, 22050, 44100, 48000, 7999, 48001, 0, -1]),
    st.sampled_from(["pcm_s16le", "pcm_f32le", "mp3", ""]),
    st.sampled_from([1, 2, 0, 3]),
)
raw_text = st.text(max_size=200)
binaries = st.binary(max_size=2048) | st.integers(0, 70000).map(lambda n: b"\x01" * n)
messages = st.one_of(json_messages, starts, raw_text, binaries)


def is_stop(message) -> bool:
    """A message the server ends the session on."""
    try:
        msg = json.loads(message) if isinstance(message, str) else None
    except json.JSONDecodeError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "stop"


async def exchange(url, sequence) -> list[dict]:
    """Send `sequence`, then a probe the session must answer; the JSON messages the server sent.

    The server may close the socket only after a `stop` it was sent; then the messages it sent
    before closing are read and the probe is skipped."""
    received = []

    async def read_rest(ws):
        try:
            while True:
                received.append(await ws.recv())
        except ConnectionClosed:
            pass

    async with connect(url, max_size=None) as ws:
        sent = []
        try:
            for msg in sequence:
                await ws.send(msg)
                sent.append(msg)
                SENT["messages"] += 1
            await ws.send(json.dumps({"type": "dance"}))  # the session must still answer
            while True:
                reply = await asyncio.wait_for(ws.recv(), HANG_GUARD_S)
                received.append(reply)
                if isinstance(reply, str) and "'dance'" in json.loads(reply).get("message", ""):
                    break
        except ConnectionClosed as closed:
            assert any(is_stop(m) for m in sent), f"the server closed the session ({closed}) without a stop"
            await read_rest(ws)
    return [json.loads(r) for r in received if isinstance(r, str)]


def session_count(server_url) -> int:
    with urllib.request.urlopen(server_url + "stats") as resp:
        return json.loads(resp.read())["sessions"]


@pytest.fixture(scope="module")
def ws_url(server_url):
    return server_url.replace("http://", "ws://") + "ws"


@settings(max_examples=350, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(messages, min_size=2, max_size=16))
def test_fuzz_sequences_never_break_a_session(server, ws_url, sequence):
    """Per example, so hypothesis shrinks a failing one: no internal error, the server still
    runs, and the session is gone once its socket closed."""
    proc, server_url = server
    replies = asyncio.run(exchange(ws_url, sequence))
    assert not [r for r in replies if r.get("code") == "internal"], replies
    assert proc.poll() is None, "the server exited"
    deadline = time.monotonic() + SESSION_GONE_S
    while (open_sessions := session_count(server_url)) != 0:
        assert time.monotonic() < deadline, f"{open_sessions} sessions still open after the socket closed"
        time.sleep(0.01)


def test_after_fuzz_server_answers_a_real_turn_and_is_clean(ws_url, server_url):
    assert SENT["messages"] >= 1000, SENT  # 350 sequences of 2–16 (one run sent 1,904, another over 2,000)

    async def main():
        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}))
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
            while True:
                msg = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(msg, str) and json.loads(msg)["type"] == "turn_end":
                    return json.loads(msg)

    end = asyncio.run(main())
    assert "paris" in end["reply"].lower()
    assert session_count(server_url) == 0
