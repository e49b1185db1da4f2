"""Two real workers behind HAProxy on loopback: a soak through the balancer, then SIGTERM to one
worker mid-turn (slow: each worker loads the embedded models, ~20 s on 2 cores; one fleet for
every check). No timing asserts: generous deadlines, behaviour only."""

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from commands.bench import bench_audio
from commands.fleet import Fleet, FleetError, find_haproxy, render_config
from commands.soak import soak
from voice.config import load_config

DEADLINE_S = 300


def haproxy_or_skip() -> str:
    try:
        return find_haproxy()
    except FleetError as err:  # `make test` installs it through scripts/bootstrap --test (root + apt)
        pytest.skip(f"haproxy cannot be installed here: {err}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(url: str, name: str) -> float:
    """A sample of a worker's /metrics, parsed with prometheus_client's text parser."""
    status, text = get(url + "metrics")
    assert status == 200
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(samples) == 1, (name, samples)
    return samples[0].value


def test_rendered_config_passes_haproxys_own_check(tmp_path):
    import subprocess

    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_config(8765, [8801, 8802, 8803], check_ms=1000, max_sessions=8))
    out = subprocess.run([haproxy_or_skip(), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "balance leastconn" in cfg.read_text() and "uri /healthz" in cfg.read_text()


@pytest.fixture(scope="module")
def fleet(stack):  # `stack` prepares the models first
    haproxy_or_skip()
    fleet = Fleet(workers=2, port=free_port(), first_worker_port=0, check_ms=250, max_sessions=4)
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.mark.slow
def test_fleet_soak_then_drain_one_worker_mid_turn(fleet, stack):
    paths = bench_audio(load_config(), stack.tts)[:3]
    ws_url = fleet.url.replace("http://", "ws://") + "ws"
    workers = [w.url for w in fleet.members]

    # 1. a soak through HAProxy: every turn answered, the workers' turn-gap histograms count them all
    first = asyncio.run(soak(ws_url, paths, levels=[2], turns=1))
    level = first["levels"][0]
    assert level["answered"] == 2 and level["lost"] == 0 and not level["errors"], level
    counted = sum(metric(w, "voice_turn_gap_seconds_count") for w in workers)
    assert counted == first["warmup_answered"] + level["answered"]

    # 2. the same again, and SIGTERM to the first worker seen with a turn in progress
    async def soak_and_drain():
        run = asyncio.ensure_future(soak(ws_url, paths, levels=[2], turns=3, warmup=False))
        victim = await asyncio.to_thread(_worker_in_a_turn, fleet, run)
        victim.proc.send_signal(15)
        health = await asyncio.to_thread(_until_unready, victim.url)
        return await run, victim, health

    second, victim, health = asyncio.run(soak_and_drain())
    assert health["reason"] == "draining" and health["sessions"] >= 1, health  # unready while still serving
    level = second["levels"][0]
    assert level["answered"] == 6 and level["lost"] == 0 and not level["errors"], level
    assert level["retried"] >= 1, level  # the victim's talker said its next turn on the other worker
    out = victim.proc.communicate(timeout=DEADLINE_S)[0]
    assert victim.proc.returncode == 0, out
    assert "event=drain_end cut_sessions=0" in out, out  # every session closed at a turn boundary
    survivor = next(w for w in fleet.members if w is not victim)
    assert get(survivor.url + "healthz")[0] == 200
    assert metric(survivor.url, "voice_draining") == 0


def _worker_in_a_turn(fleet, run) -> object:
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline and not run.done():
        for worker in fleet.members:
            if metric(worker.url, "voice_turns_in_progress") >= 1:
                return worker
        time.sleep(0.1)
    raise AssertionError("no worker had a turn in progress during the soak")


def _until_unready(url: str) -> dict:
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        status, body = get(url + "healthz")
        if status == 503:
            return json.loads(body)
        time.sleep(0.02)
    raise AssertionError("the draining worker's /healthz stayed 200")
