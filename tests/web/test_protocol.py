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
    order = [kinds.index(k) for k in ("vad/speech_start", "vad/endpoint", "reply", "audio_start", "audio", "turn_end")]
    assert order == sorted(order), kinds
    final = next(m for m in msgs if isinstance(m, dict) and m["type"] == "transcript" and m["final"])
    assert "capital of france" in final["text"].lower()
    reply = "".join(m["text"] for m in msgs if isinstance(m, dict) and m["type"] == "reply")
    assert "paris" in reply.lower()
    m = msgs[-1]["metrics"]
    assert m["tokens"] > 0 and not m["interrupted"]
    # each stage after the one it waits for, from the end of speech (how fast is the bench's job)
    assert 0 <= m["endpoint_ms"] <= m["first_audio_ms"] == m["turn_gap_ms"] <= m["last_audio_ms"]
    assert m["asr_final_ms"] <= m["first_audio_ms"] and m["first_span_ms"] <= m["first_audio_ms"]


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
            cut = await recv_until(ws, is_type("turn_end"))
            await ws.send(json.dumps({"type": "text", "text": "Say hello."}))
            after = await recv_until(ws, is_type("turn_end"))
            return first, cut, after

    first, cut, after = asyncio.run(main())
    assert any(isinstance(m, dict) and m["type"] == "transcript" and m["final"] for m in first)
    assert "paris" in "".join(m["text"] for m in first if isinstance(m, dict) and m["type"] == "reply").lower()
    assert cut[-1]["metrics"]["interrupted"] is True
    # not one byte of the stopped reply after its turn_end: the next audio is the new turn's
    first_audio = next(i for i, m in enumerate(after) if isinstance(m, bytes) or m["type"] == "audio_start")
    assert after[first_audio] == {"type": "audio_start", "sample_rate": 22050}, after[: first_audio + 1]
    assert after[-1]["metrics"]["interrupted"] is False


def test_two_sessions_keep_separate_conversations(server_url):
    """A name told to one session is known to it and not to the other, asked at the same time."""

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
            await turn(a, "Hi, my name is Zoltan.")
            return await asyncio.gather(turn(a, "What is my name?"), turn(b, "What is my name?"))

    asked_a, asked_b = asyncio.run(main())
    assert "zoltan" in asked_a["reply"].lower(), asked_a["reply"]
    assert "zoltan" not in asked_b["reply"].lower(), asked_b["reply"]


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


def test_48k_stereo_float_input_is_mixed_down_and_resampled(server_url, question_wav, stack, tmp_path):
    """Left = question + another sentence, right = question - it: only the mean of the two
    channels is the question alone (one channel, or the samples read as mono, is not)."""
    from audio.wavio import write_wav

    other = tmp_path / "other.wav"
    write_wav(other, stack.tts.synthesize_all("How far away is the moon?", deterministic=True), stack.tts.rate_hz)

    async def main():
        async with connect(ws_url(server_url)) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 48000, "format": "pcm_f32le", "channels": 2}))
            await ws.recv()
            audio = read_wav(question_wav, rate_hz=48000)
            audio = np.concatenate([np.zeros(24000, np.float32), audio, np.zeros(48000 * 3, np.float32)])
            moon = read_wav(other, rate_hz=48000)[: len(audio) - 24000]
            moon = 1.5 * np.concatenate([np.zeros(24000, np.float32), moon, np.zeros(len(audio) - 24000 - len(moon))])
            stereo = np.stack([audio + moon, audio - moon], axis=1).reshape(-1).astype("<f4")
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
