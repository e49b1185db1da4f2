"""One event loop per process on the entry paths that measure: `voice turn`, `voice bench
--baseline` and `voice soak` run all their async work (a server's streamed reply included) on the
one loop their command starts. The models and the sessions are stand-ins: what is counted is the
loops the commands make."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest
from fake_openai import REPLY, ChatServer

import commands.bench
import commands.soak
import voice.stack
from audio.wavio import write_wav
from commands.cli import main
from commands.turn_record import TurnRecord


@pytest.fixture
def loops(monkeypatch) -> list:
    """Every event loop made from here on."""
    made, init = [], asyncio.BaseEventLoop.__init__

    def record(self, *args, **kwargs) -> None:
        made.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "__init__", record)
    return made


@pytest.fixture
def server():
    srv = ChatServer()
    yield srv
    srv.close()


@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "q.wav"
    write_wav(path, np.zeros(16000, np.int16), 16000)
    return path


@pytest.fixture
def fake_models(monkeypatch):
    """`load_stack` gives a transcriber and a voice that answer at once; replies come from the
    configured backend (`Stack.replies`), so with llm.backend=openai from the server."""

    def load(cfg):
        def replies(llm):
            assert llm.backend == "openai", "the batch turn must honour llm.backend"
            return voice.stack.remote_replies(cfg, lambda text: [0] * len(text.split()))

        asr = SimpleNamespace(transcribe=lambda audio: "what is the capital of France")
        tts = SimpleNamespace(rate_hz=16000, synthesize_all=lambda text: np.zeros(1600, np.int16))
        return SimpleNamespace(asr=asr, tts=tts, replies=replies)

    monkeypatch.setattr(voice.stack, "load_stack", load)


def openai_backend(srv: ChatServer) -> list[str]:
    return ["--set", "llm.backend=openai", "--set", f"llm.base_url={srv.url}"]


def test_voice_turn_reads_the_servers_reply_on_its_one_loop(fake_models, server, wav, loops, capsys):
    assert main(["turn", str(wav), "--json", *openai_backend(server)]) == 0
    assert json.loads(capsys.readouterr().out)["reply"] == "".join(REPLY)
    assert len(loops) == 1


def test_bench_baseline_runs_the_batch_turn_on_the_benchs_loop(fake_models, server, wav, loops, monkeypatch, capsys):
    async def streamed_turn(stack, cfg, path):
        return TurnRecord(path.name, last_voiced_fed_t=1.0, first_audio=1.5, transcript="what is it")

    monkeypatch.setattr(commands.bench, "run_inprocess_turn", streamed_turn)
    args = ["bench", "--json", "--baseline", "--audio", str(wav), "--turns", "2", *openai_backend(server)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"]["turn_gap_ms"]["p50"] > 0 and len(server.requests) == 2  # it asked the server
    assert len(loops) == 1


def test_soak_runs_its_levels_and_the_storm_on_one_loop(wav, loops, monkeypatch, capsys):
    ran = []

    async def soak(url, paths, levels, turns, token=None):
        ran.append("soak")
        return {"warmup_answered": 1, "levels": [{"clients": n, "answered": turns} for n in levels]}

    async def disconnect_storm(url, path, clients, token=None):
        ran.append("storm")
        return {"clients": clients}

    monkeypatch.setattr(commands.soak, "soak", soak)
    monkeypatch.setattr(commands.soak, "disconnect_storm", disconnect_storm)
    monkeypatch.setattr(commands.bench, "bench_audio", lambda cfg: [wav])
    assert main(["soak", "--server", "ws://127.0.0.1:9/ws", "--clients", "1,2", "--storm", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["storm"] == {"clients": 3}
    assert ran == ["soak", "storm"] and len(loops) == 1
