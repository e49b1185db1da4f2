"""Protocol tests: a real websockets client against a real server (slow: real models)."""

import asyncio
import json
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from audio.wavio import float_to_pcm16, read_wav
from guards import HANG_GUARD_S

pytestmark = pytest.mark.slow
START = {"type": "start", "sample_rate": 16000, "format": "pcm_s16le", "channels": 1}


def ws_url(server_url):
    return server_url.replace("http://", "ws://") + "ws"


async def recv_until(ws, pred, timeout=HANG_GUARD_S):
    """Messages (decoded JSON, or bytes) up to and including the first matching one."""
    out = []
    deadline = time.perf_counter() + timeout
    while True:
        msg = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.perf_counter()))
        msg = msg if isinstance(msg, bytes) else json.loads(msg)
        out.append(msg)
        if pred(msg):
            return out


def is_type(kind):
    return lambda m: isinstance(m, dict) and m["type"] == kind


async def stream(ws, audio, rate=16000, frame_s=0.02, speed=2.0):
    step = int(rate * frame_s)
    for i in range(0, len(audio), step):
        await ws.send(float_to_pcm16(audio[i : i + step]).tobytes())
        await asyncio.sleep(frame_s / speed)


def test_spoken_question_gets_events_in_order(server_url, question_wav):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps(START))
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready" and ready["output_sample_rate"] == 22050
            audio = np.concatenate(
                [np.zeros(8000, np.float32), read_wav(question_wav), np.zeros(16000 * 3, np.float32)]
            )
            sender = asyncio.ensure_future(stream(ws, audio))
            msgs = await recv_until(ws, is_type("turn_end"))
            sender.cancel()
            return msgs

    msgs = asyncio.run(main())
    kinds = [
        "audio" if isinstance(m, bytes) else m["type"] + ("/" + m.get("state", "") if m["type"] == "vad" else "")
        for m in msgs
    ]
    order = [
        kinds.index(k) for k in ("vad/speech_start", "vad/speech_end", "reply", "audio_start", "audio", "turn_end")
    ]
    assert order == sorted(order), kinds
    final = next(m for m in msgs if isinstance(m, dict) and m["type"] == "transcript" and m["final"])
    assert "capital of france" in final["text"].lower()
    reply = "".join(m["text"] for m in msgs if isinstance(m, dict) and m["type"] == "reply")
    assert "paris" in reply.lower()
    metrics = msgs[-1]["metrics"]
    assert 0 < metrics["turn_gap_ms"] < 5000 and metrics["tokens"] > 0 and not metrics["interrupted"]
    assert metrics["asr_final_ms"] <= metrics["first_audio_ms"]


def test_text_turn_and_interrupt(server_url):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps(START))
            await ws.recv()
            await ws.send(json.dumps({"type": "text", "text": "What is the capital of France?"}))
            first = await recv_until(ws, is_type("turn_end"))
            await ws.send(json.dumps({"type": "text", "text": "Tell me a fun fact about octopuses."}))
            await recv_until(ws, lambda m: isinstance(m, bytes))
            await ws.send(json.dumps({"type": "interrupt"}))
            t0 = time.perf_counter()
            cut = await recv_until(ws, is_type("turn_end"))
            return first, cut, time.perf_counter() - t0

    first, cut, took = asyncio.run(main())
    assert any(isinstance(m, dict) and m["type"] == "transcript" and m["final"] for m in first)
    assert "paris" in "".join(m["text"] for m in first if isinstance(m, dict) and m["type"] == "reply").lower()
    assert cut[-1]["metrics"]["interrupted"] is True and took < 1.0


def test_two_sessions_keep_separate_conversations(server_url):
    async def turn(ws, text):
        await ws.send(json.dumps({"type": "text", "text": text}))
        msgs = await recv_until(ws, is_type("turn_end"))
        return msgs[-1]

    async def main():
        async with connect(ws_url(server_url)) as a, connect(ws_url(server_url)) as b:
            for ws in (a, b):
                await ws.send(json.dumps(START))
            ra, rb = json.loads(await a.recv()), json.loads(await b.recv())
            assert ra["session"] != rb["session"]
            ends = await asyncio.gather(turn(a, "What is the capital of France?"), turn(b, "Why is the sky blue?"))
            second = await turn(a, "And what about Germany?")
            return ends, second

    (end_a, end_b), second = asyncio.run(main())
    assert "france" in end_a["transcript"].lower() and "sky" in end_b["transcript"].lower()
    assert "paris" in end_a["reply"].lower() and "paris" not in end_b["reply"].lower()
    assert second["metrics"]["tokens"] > 0


@pytest.mark.parametrize(
    "send, code",
    [
        ("not json", "bad_json"),
        (json.dumps([1, 2]), "bad_message"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (b"\x00\x01", "not_started"),
        (json.dumps({"type": "text", "text": "hi"}), "not_started"),
    ],
)
def test_bad_input_before_start_gets_error_and_session_survives(server_url, send, code):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(send)
            err = json.loads(await ws.recv())
            await ws.send(json.dumps(START))
            ready = json.loads(await ws.recv())
            return err, ready

    err, ready = asyncio.run(main())
    assert err["type"] == "error" and err["code"] == code and ready["type"] == "ready"


@pytest.mark.parametrize(
    "send, code",
    [
        (json.dumps(START), "already_started"),
        (b"\x00\x01\x02", "bad_frame"),
        (b"", "empty_frame"),
        (b"\x00" * 70000, "frame_too_large"),
        (json.dumps({"type": "text", "text": "   "}), "empty_text"),
        (json.dumps({"type": "text", "text": "a" * 2001}), "text_too_long"),
    ],
)
def test_bad_input_after_start_gets_error_and_session_survives(server_url, send, code):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps(START))
            await ws.recv()
            await ws.send(send)
            err = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "text", "text": "Say hello."}))
            end = await recv_until(ws, is_type("turn_end"))
            return err, end

    err, end = asyncio.run(main())
    assert err["type"] == "error" and err["code"] == code
    assert end[-1]["metrics"]["tokens"] > 0


@pytest.mark.parametrize(
    "start, code",
    [
        ({"sample_rate": 4000}, "bad_sample_rate"),
        ({"sample_rate": "16000"}, "bad_sample_rate"),
        ({"format": "mp3"}, "bad_format"),
        ({"channels": 6}, "bad_channels"),
    ],
)
def test_unsupported_start_parameters(server_url, start, code):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps({**START, **start}))
            return json.loads(await ws.recv())

    err = asyncio.run(main())
    assert err["code"] == code


def test_48k_stereo_float_input_is_resampled(server_url, question_wav):
    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 48000, "format": "pcm_f32le", "channels": 2}))
            await ws.recv()
            audio = read_wav(question_wav, rate_hz=48000)
            audio = np.concatenate([np.zeros(24000, np.float32), audio, np.zeros(48000 * 3, np.float32)])
            stereo = np.repeat(audio, 2).astype("<f4")
            step = 960 * 2

            async def send():
                for i in range(0, len(stereo), step):
                    await ws.send(stereo[i : i + step].tobytes())
                    await asyncio.sleep(0.01)

            sender = asyncio.ensure_future(send())
            msgs = await recv_until(ws, lambda m: isinstance(m, dict) and m["type"] == "transcript" and m["final"])
            sender.cancel()
            return msgs[-1]

    assert "capital of france" in asyncio.run(main())["text"].lower()


def test_foreign_origin_is_refused(server_url):
    async def main():
        async with connect(ws_url(server_url), origin="http://evil.example"):
            pass

    with pytest.raises(InvalidStatus) as err:
        asyncio.run(main())
    assert err.value.response.status_code == 403
