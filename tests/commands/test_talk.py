import asyncio
import subprocess
import sys

import numpy as np
import pytest

from guards import HANG_GUARD_S


def run_cli(*args, timeout=HANG_GUARD_S):
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_bad_input_device_is_a_clear_error():
    out = run_cli("talk", "--input-device", "999")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert "--input-wav" in out.stderr


def test_a_server_that_is_not_a_websocket_url_is_a_usage_error(capsys):
    from commands.cli import main
    from commands.cli_args import UsageError
    from commands.talk import talk_command
    from voice.config import load_config

    assert main(["talk", "--server", "http://127.0.0.1:8765/"]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: --server must be a ws:// or wss:// URL, got 'http://127.0.0.1:8765/'"
    )
    args = type("Args", (), {"server": "127.0.0.1:8765", "input_device": None, "output_device": None})
    with pytest.raises(UsageError):
        talk_command(args, load_config())


def test_devices_lists_or_says_there_are_none():
    out = run_cli("devices")
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr
    assert out.stdout.strip() or out.stderr.startswith("error: ")


@pytest.mark.slow
def test_talk_with_a_wav_as_microphone(stack, question_wav, tmp_path):
    reply = tmp_path / "reply.wav"
    out = run_cli("talk", "--input-wav", str(question_wav), "--output-wav", str(reply))
    assert out.returncode == 0, out.stderr
    heard = [line for line in out.stdout.splitlines() if line.startswith("you:")]
    assert heard and "capital of france" in heard[0].lower(), out.stdout
    assert "paris" in out.stdout.lower() and "[turn gap " in out.stdout
    assert reply.stat().st_size > 20000


class Voice16k:
    """The embedded piper voice, resampled to 16 kHz: a voice at another rate than 22.05 kHz."""

    rate_hz = 16000

    def __init__(self, tts):
        self.tts = tts

    def synthesize(self, text, deterministic=False):
        import soxr

        from voice.tts import AudioChunk

        for chunk in self.tts.synthesize(text, deterministic):
            samples = soxr.resample(chunk.samples.astype(np.float32), chunk.rate_hz, self.rate_hz)
            yield AudioChunk(samples.astype(np.int16), self.rate_hz, chunk.t)


@pytest.mark.slow
def test_talk_writes_the_voices_own_rate(stack, question_wav, tmp_path, monkeypatch):
    import dataclasses
    import wave

    import voice.stack
    from commands.talk import talk
    from voice.config import load_config

    monkeypatch.setattr(voice.stack, "load_stack", lambda cfg: dataclasses.replace(stack, tts=Voice16k(stack.tts)))
    out = tmp_path / "reply16k.wav"
    assert asyncio.run(talk(load_config(), input_wav=str(question_wav), output_wav=str(out))) == 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 16000 * 0.5


def test_talk_through_a_server_reconnects_when_the_worker_goes_away(tmp_path, capsys):
    """`voice talk --server`: the first worker closes with 1001 mid-stream (it drains); talk opens a new
    session and the second worker answers. A scripted server: no models."""
    import json

    from websockets.asyncio.server import serve

    from audio.wavio import write_wav
    from commands.talk_remote import talk_remote

    sessions = []
    metrics = {
        "turn_gap_ms": 512.0,
        "asr_final_ms": 100.0,
        "first_span_ms": 300.0,
        "interrupted": False,
        "shortened": False,
    }

    async def handler(ws):
        assert json.loads(await ws.recv())["type"] == "start"
        sessions.append(ws)
        await ws.send(json.dumps({"type": "ready", "session": f"s{len(sessions)}", "output_sample_rate": 16000}))
        for _ in range(10):  # audio frames
            assert isinstance(await ws.recv(), bytes)
        if len(sessions) == 1:
            await ws.close(1001, "going away")
            return
        for msg in (
            {"type": "transcript", "final": True, "text": "What is the capital of France?"},
            {"type": "reply", "text": "Paris."},
            {"type": "audio_start", "sample_rate": 16000},
        ):
            await ws.send(json.dumps(msg))
        await ws.send(np.zeros(1600, "<i2").tobytes())
        await ws.send(json.dumps({"type": "turn_end", "metrics": metrics, "transcript": "", "reply": "Paris."}))
        async for _ in ws:  # the client closes once its WAV is fed and answered
            pass

    wav, reply = tmp_path / "q.wav", tmp_path / "reply.wav"
    write_wav(wav, 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 16000)

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            return await asyncio.wait_for(
                talk_remote(f"ws://127.0.0.1:{port}/ws", input_wav=str(wav), output_wav=str(reply)), 60
            )

    assert asyncio.run(main()) == 0
    out = capsys.readouterr().out
    assert len(sessions) == 2 and "draining — reconnecting" in out
    assert "you:       What is the capital of France?" in out and "Paris." in out and "[turn gap 512.0 ms" in out
    assert reply.stat().st_size > 3000


def test_talk_through_a_server_reconnects_after_a_drop_and_says_when_the_server_is_gone(tmp_path, capsys, monkeypatch):
    """The first session's connection drops without a close (its worker killed): talk opens a new one.
    Then, with nothing listening, `voice talk --server` ends with one line and the turns answered."""
    import json
    import socket

    from websockets.asyncio.server import serve

    import web.client
    from audio.wavio import write_wav
    from commands.cli import main
    from commands.talk_remote import talk_remote

    monkeypatch.setattr(web.client, "OPEN_RETRY_DELAY_S", 0.0)
    sessions = []
    metrics = {
        "turn_gap_ms": 512.0,
        "asr_final_ms": 1.0,
        "first_span_ms": 1.0,
        "interrupted": False,
        "shortened": False,
    }

    async def handler(ws):
        assert json.loads(await ws.recv())["type"] == "start"
        sessions.append(ws)
        await ws.send(json.dumps({"type": "ready", "session": f"s{len(sessions)}", "output_sample_rate": 16000}))
        for _ in range(10):
            await ws.recv()
        if len(sessions) == 1:
            ws.transport.abort()  # a killed worker: no close frame
            return
        await ws.send(json.dumps({"type": "transcript", "final": True, "text": "Hi?"}))
        await ws.send(json.dumps({"type": "audio_start", "sample_rate": 16000}))
        await ws.send(np.zeros(1600, "<i2").tobytes())
        await ws.send(json.dumps({"type": "turn_end", "metrics": metrics, "transcript": "", "reply": "Hello."}))
        async for _ in ws:
            pass

    wav = tmp_path / "q.wav"
    write_wav(wav, 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 16000)

    async def through_server():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            url = f"ws://127.0.0.1:{port}/ws"
            return await asyncio.wait_for(talk_remote(url, input_wav=str(wav), output_wav=str(tmp_path / "r.wav")), 60)

    assert asyncio.run(through_server()) == 0
    assert len(sessions) == 2 and "connection dropped — reconnecting" in capsys.readouterr().out

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        gone = f"ws://127.0.0.1:{s.getsockname()[1]}/ws"
    assert main(["talk", "--server", gone, "--input-wav", str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the server at {gone} went away") and "(0 turns answered before)" in err, err
    assert len(err.strip().splitlines()) == 1, err
