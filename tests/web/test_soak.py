"""Fast soak and disconnect storm against the live server (slow: real models)."""
import asyncio

import pytest

from voice.bench import bench_audio
from voice.config import load_config
from voice.soak import disconnect_storm, soak

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws_url(server_url):
    return server_url.replace("http://", "ws://") + "ws"


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
