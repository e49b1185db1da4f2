"""Fast soak and disconnect storm against a live server of their own (slow: real models)."""

import asyncio

import pytest

from commands.bench import bench_audio
from commands.launch import spawn_server, stop_server
from commands.soak import disconnect_storm, soak
from voice.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws_url(stack):  # `stack` prepares the models first
    proc, url = spawn_server("--set", "server.max_sessions=6")
    yield url.replace("http://", "ws://") + "ws"
    out = stop_server(proc)
    assert proc.returncode == 0, out


def test_concurrent_sessions_lose_no_turn_and_resources_return(ws_url, stack):
    paths = bench_audio(load_config(), stack.tts)
    result = asyncio.run(soak(ws_url, paths[:3], levels=[2], turns=2))
    level = result["levels"][0]
    assert level["answered"] == 4 and level["lost"] == 0, level
    before, after = result["before"], result["after"]
    assert after["sessions"] == 0 and after["tasks"] <= before["tasks"]
    assert after["threads"] <= before["threads"] + 40  # the default executor's pool may stay grown


def test_disconnect_storm_frees_every_session(ws_url, stack):
    paths = bench_audio(load_config(), stack.tts)
    result = asyncio.run(disconnect_storm(ws_url, paths[0], clients=6))
    assert result["after"]["sessions"] == 0
    assert result["after"]["tasks"] <= result["before"]["tasks"]
    assert result["after"]["rss_bytes"] < result["before"]["rss_bytes"] + 300 * 2**20
