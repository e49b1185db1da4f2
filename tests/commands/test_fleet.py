"""`voice fleet` itself (a child process: two real workers and HAProxy on loopback) keeps serving
while its workers go away: SIGTERM to one under a soak, SIGKILL to one, a rolling restart
(SIGHUP), HAProxy killed; and a soak whose balancer is killed ends with one line and its JSON.
Slow: each worker start loads the embedded models (~20 s on 2 cores); one fleet for every check.
No timing asserts: every wait is on a condition, with the hang guard."""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from commands.balancer import FleetError, find_haproxy, render_config
from commands.bench import bench_audio
from commands.soak import soak
from guards import HANG_GUARD_S
from voice.config import load_config


def haproxy() -> str:
    """The haproxy binary; without it the fleet tests fail (like the browser tests without Chromium)."""
    try:
        return find_haproxy()
    except FleetError:  # `make test` installs it through scripts/bootstrap --test (root + apt)
        pytest.fail("haproxy is needed for the fleet tests: run `scripts/bootstrap --test` as root")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:  # a worker between two lives
        return None, str(err)


def metric(url: str, name: str) -> float:
    """A sample of a worker's /metrics, parsed with prometheus_client's text parser."""
    status, text = get(url + "metrics")
    assert status == 200, text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(samples) == 1, (name, samples)
    return samples[0].value


def until(condition, what: str):
    """Poll `condition()` until it returns something truthy (the hang guard says when to give up)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"hang guard: {what}")


def test_rendered_config_passes_haproxys_own_check(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_config(8765, [8801, 8802, 8803], 1000, 8, tmp_path / "admin.sock"))
    out = subprocess.run([haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = cfg.read_text()
    assert "balance leastconn" in text and "uri /healthz" in text and "stats socket" in text


@dataclass
class RunningFleet:
    """`voice fleet` as a child process, its output lines collected as they come."""

    proc: subprocess.Popen
    port: int
    lines: list[str] = field(default_factory=list)

    def read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, after: int = 0) -> re.Match:
        """The first line from index `after` on that matches; fails if the fleet exits first."""

        def seen():
            found = next((m for line in self.lines[after:] if (m := re.search(pattern, line))), None)
            assert found or self.proc.poll() is None, "the fleet exited:\n" + "\n".join(self.lines)
            return found

        return until(seen, f"no line {pattern!r} in:\n" + "\n".join(self.lines))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def workers(self) -> dict[str, str]:
        """Worker name -> its URL, from the ready line."""
        ready = self.wait_line("fleet ready").string
        return {name: f"http://127.0.0.1:{port}/" for name, port in re.findall(r"worker (w\d+) \(port (\d+)", ready)}

    def pid(self, name: str) -> int:
        """The pid of the worker's (or haproxy's) latest process, from the fleet's lines."""
        pattern = (
            r"haproxy pid (\d+)|haproxy .*\(pid (\d+)" if name == "haproxy" else rf"worker {name} \(port \d+, pid (\d+)"
        )
        pids = [next(g for g in m.groups() if g) for line in self.lines if (m := re.search(pattern, line))]
        return int(pids[-1])

    def workdir(self) -> str:
        return re.search(r"config (\S+)/haproxy\.cfg", self.wait_line("fleet ready").string).group(1)


@pytest.fixture(scope="module")
def fleet(stack):  # `stack` prepares the models first
    haproxy()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "fleet", "--workers", "2", "--port", str(port)]
        + ["--first-worker-port", "0", "--check-ms", "250", "--set", "server.max_sessions=4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    running = RunningFleet(proc, port)
    threading.Thread(target=running.read, daemon=True).start()
    try:
        running.wait_line("fleet ready")
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG_GUARD_S)
    assert proc.returncode == 0 and "fleet stopped" in running.lines[-1], "\n".join(running.lines)


@pytest.fixture(scope="module")
def paths(stack):
    return bench_audio(load_config(), stack.tts)[:3]


def worker_in_a_turn(workers: dict[str, str], run) -> str:
    """The first worker seen with a turn in progress while `run` (a soak) goes on."""

    def busy():
        assert not run.done(), "the soak ended before a worker was seen in a turn"
        return next((n for n, url in workers.items() if metric(url, "voice_turns_in_progress") >= 1), None)

    return until(busy, "no worker had a turn in progress during the soak")


def soak_and_signal(fleet: RunningFleet, paths, sig: int) -> tuple[dict, str]:
    """A soak (2 talkers, 3 turns each) through the fleet; `sig` to the first worker seen in a turn."""
    workers = fleet.workers()

    async def run():
        running = asyncio.ensure_future(soak(fleet.ws_url, paths, levels=[2], turns=3, warmup=False))
        victim = await asyncio.to_thread(worker_in_a_turn, workers, running)
        os.kill(fleet.pid(victim), sig)
        return await running, victim

    return asyncio.run(run())


def assert_every_turn_answered(result: dict, turns: int) -> None:
    level = result["levels"][0]
    assert level["answered"] == turns and level["lost"] == 0 and not level["errors"], level
    assert "server_lost" not in result, result


@pytest.mark.slow
def test_a_soak_through_the_fleet_is_answered_and_counted_by_the_workers(fleet, paths):
    workers = fleet.workers().values()
    counted = sum(metric(url, "voice_turn_gap_seconds_count") for url in workers)
    result = asyncio.run(soak(fleet.ws_url, paths, levels=[2], turns=1))
    assert_every_turn_answered(result, 2)
    now = sum(metric(url, "voice_turn_gap_seconds_count") for url in workers)
    assert now - counted == result["warmup_answered"] + 2


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["drained", "killed"])
def test_a_worker_that_goes_away_under_a_soak_comes_back_and_no_turn_is_lost(fleet, paths, sig):
    mark, workers = len(fleet.lines), fleet.workers()
    restarts = {name: metric(url, "voice_worker_restarts") for name, url in workers.items()}
    result, victim = soak_and_signal(fleet, paths, sig)
    assert_every_turn_answered(result, 6)
    # SIGTERM: the running turn is answered, the talker's next one is said on the other worker after
    # the 1001; SIGKILL: the cut turn itself is said again there
    assert result["levels"][0]["retried"] >= 1, result["levels"][0]
    n = int(restarts[victim]) + 1
    fleet.wait_line(rf"worker {victim} \(port \d+, pid \d+\) is back in rotation \(restart {n}\)", mark)
    assert get(workers[victim] + "healthz")[0] == 200
    assert metric(workers[victim], "voice_worker_restarts") == n
    assert fleet.proc.poll() is None  # the fleet itself is still up
    exited = fleet.wait_line(rf"worker {victim} \(port \d+\) (.*): started again", mark).group(1)
    assert exited == ("exited (0)" if sig == signal.SIGTERM else "was killed (SIGKILL)"), exited
    if sig == signal.SIGTERM:
        with open(f"{fleet.workdir()}/worker-{workers[victim].rsplit(':', 1)[1].strip('/')}.log") as log:
            assert "event=drain_end cut_sessions=0" in log.read()  # every session closed at a turn boundary


@pytest.mark.slow
def test_rolling_restart_under_a_soak_drains_one_worker_at_a_time_and_loses_no_turn(fleet, paths):
    mark, workers = len(fleet.lines), fleet.workers()
    restarts = {name: metric(url, "voice_worker_restarts") for name, url in workers.items()}

    async def run() -> list[dict]:
        os.kill(fleet.proc.pid, signal.SIGHUP)
        rolled = asyncio.ensure_future(asyncio.to_thread(fleet.wait_line, "rolling restart done", mark))
        rounds = []
        while not rolled.done():  # talkers all through the roll
            rounds.append(await soak(fleet.ws_url, paths, levels=[2], turns=1, warmup=False))
        await rolled
        return rounds

    for result in asyncio.run(run()):
        assert_every_turn_answered(result, 2)
    events = [
        m.group(0)
        for line in fleet.lines[mark:]
        if (m := re.search(r"draining worker w\d|worker w\d(?= \(port \d+, pid \d+\) is back)", line))
    ]
    assert events == ["draining worker w1", "worker w1", "draining worker w2", "worker w2"], events
    for name, url in workers.items():
        assert metric(url, "voice_worker_restarts") == restarts[name] + 1


@pytest.mark.slow
def test_a_killed_balancer_is_started_again(fleet, paths):
    mark = len(fleet.lines)
    os.kill(fleet.pid("haproxy"), signal.SIGKILL)
    fleet.wait_line(r"haproxy is back in rotation \(restart 1\)", mark)
    assert_every_turn_answered(asyncio.run(soak(fleet.ws_url, paths, levels=[1], turns=1, warmup=False)), 1)


@pytest.mark.slow
def test_a_soak_whose_balancer_is_killed_prints_one_line_and_its_json(fleet, tmp_path):
    workers = fleet.workers()
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    ports = [int(url.rsplit(":", 1)[1].strip("/")) for url in workers.values()]
    cfg.write_text(render_config(port, ports, 250, 4, tmp_path / "admin.sock"))
    balancer = subprocess.Popen([haproxy(), "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL)
    try:
        until(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "the test's haproxy did not come up")
        answered = sum(metric(url, "voice_turn_gap_seconds_count") for url in workers.values())
        run = subprocess.Popen(
            [sys.executable, "-m", "commands.cli", "soak", "--server", f"ws://127.0.0.1:{port}/ws"]
            + ["--clients", "1", "--turns", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def second_turn_running() -> bool:  # the warm-up and one turn answered, the next one under way
            now = sum(metric(url, "voice_turn_gap_seconds_count") for url in workers.values())
            assert run.poll() is None, run.communicate()
            return now >= answered + 2 and any(metric(u, "voice_turns_in_progress") for u in workers.values())

        until(second_turn_running, "the soak did not reach its second turn")
        balancer.kill()
        out, err = run.communicate(timeout=HANG_GUARD_S)
    finally:
        balancer.kill()
        balancer.wait()
    assert run.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: the server at ws://127.0.0.1:{port}/ws went away"), err
    result = json.loads(out)
    level = result["levels"][0]
    assert result["warmup_answered"] == 1 and level["answered"] >= 1 and level["lost"] >= 1, result
    assert "went away" in result["server_lost"]
