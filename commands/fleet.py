"""`voice fleet`: N local voice workers behind HAProxy, for trying a fleet on one machine.

In: a worker count, the balancer's port, the workers' first port (consecutive ports; 0: any
free ones) and the config overrides every worker gets. Out: the workers (`voice serve`, each
loading its own models: ~20 s each on 2 cores, in parallel), `deploy/haproxy.cfg.template`
rendered for them and HAProxy running it; Ctrl-C or SIGTERM drains the workers (SIGTERM to
each: running turns finish) and stops HAProxy. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from voice.errors import VoiceError
from web.launch import start_server, wait_ready

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg.template"
HOST = "127.0.0.1"


class FleetError(VoiceError, RuntimeError):
    """The fleet could not start; the message says what to do."""


def find_haproxy() -> str:
    """The haproxy binary, or a FleetError saying how to install it."""
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).is_file()), None)
    if found is None:
        raise FleetError(
            "haproxy is not installed: run `make fleet` (scripts/bootstrap --fleet installs "
            "Debian's haproxy as root) or `apt-get install haproxy`"
        )
    return found


def render_config(bind_port: int, worker_ports: list[int], check_ms: int, max_sessions: int) -> str:
    """deploy/haproxy.cfg.template for workers on 127.0.0.1 at `worker_ports`."""
    servers = "\n".join(f"    server w{i + 1} {HOST}:{port}" for i, port in enumerate(worker_ports))
    return string.Template(TEMPLATE.read_text()).substitute(
        bind=f"{HOST}:{bind_port}", servers=servers, check_ms=check_ms, max_sessions=max_sessions
    )


@dataclass
class Worker:
    """One `voice serve` process of the fleet."""

    proc: subprocess.Popen
    url: str = ""

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


@dataclass
class Fleet:
    """Workers and the HAProxy in front of them; `start()`, then `url`; `stop()` drains the workers."""

    workers: int = 2
    port: int = 8765
    first_worker_port: int = 8801  # 0: any free ports
    check_ms: int = 1000
    max_sessions: int = 8
    worker_args: tuple[str, ...] = ()
    members: list[Worker] = field(default_factory=list)
    haproxy: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="voice-fleet-")))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self, timeout_s: float = 600.0) -> None:
        """Start the workers together, wait until each has loaded its models, then HAProxy."""
        haproxy = find_haproxy()
        for i in range(self.workers):
            port = self.first_worker_port + i if self.first_worker_port else 0
            self.members.append(
                Worker(
                    start_server(
                        "--host",
                        HOST,
                        "--port",
                        str(port),
                        "--set",
                        f"server.max_sessions={self.max_sessions}",
                        *self.worker_args,
                        own_group=True,
                    )
                )
            )
        try:
            for worker in self.members:
                worker.url = wait_ready(worker.proc, timeout_s)
            cfg = self.workdir / "haproxy.cfg"
            cfg.write_text(render_config(self.port, [w.port for w in self.members], self.check_ms, self.max_sessions))
            log = (self.workdir / "haproxy.log").open("w")
            self.haproxy = subprocess.Popen(
                [haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self._wait_balancer(timeout_s=30.0)
        except BaseException:
            self.stop()
            raise

    def _wait_balancer(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.haproxy.poll() is not None:
                raise FleetError(
                    f"haproxy exited ({self.haproxy.returncode}): {(self.workdir / 'haproxy.log').read_text()[-2000:]}"
                )
            if http_status(self.url + "healthz") == 200:
                return
            time.sleep(0.2)
        raise FleetError(f"haproxy did not answer on {self.url} within {timeout_s:.0f} s")

    def stop(self, drain_timeout_s: float = 120.0) -> dict[int, str]:
        """SIGTERM every live worker (each drains), wait for them, then stop HAProxy; returns their output."""
        outputs = {}
        for worker in self.members:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.members:
            if worker.proc.stdout.closed:  # already collected by the caller
                continue
            try:
                outputs[worker.proc.pid] = worker.proc.communicate(timeout=drain_timeout_s)[0]
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                outputs[worker.proc.pid] = worker.proc.communicate()[0]
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=30)
        return outputs


def http_status(url: str, timeout_s: float = 5.0) -> int | None:
    """The HTTP status of GET url; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def run_fleet(fleet: Fleet) -> None:
    """Start the fleet, print where it is, serve until Ctrl-C or SIGTERM, then drain it."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print(f"starting {fleet.workers} workers (each loads its models) and haproxy…", flush=True)
    fleet.start()
    ports = ", ".join(str(w.port) for w in fleet.members)
    print(
        f"fleet ready: open {fleet.url}  (websocket: ws://{HOST}:{fleet.port}/ws; workers on {ports}, "
        f"each with /healthz and /metrics; haproxy config {fleet.workdir / 'haproxy.cfg'})",
        flush=True,
    )
    try:
        while not stop:
            dead = [w for w in fleet.members if w.proc.poll() is not None]
            if dead:
                print(f"worker on port {dead[0].port} exited ({dead[0].proc.returncode}); stopping the fleet")
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("draining the workers…", flush=True)
    fleet.stop()
    print("fleet stopped", flush=True)


def add_fleet_parser(sub, common: argparse.ArgumentParser) -> None:
    """`voice fleet`'s arguments (on the CLI's subparsers)."""
    p = sub.add_parser("fleet", parents=[common], help="N local workers behind HAProxy (try a fleet)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--port", type=int, default=8765, help="the balancer's port (default 8765)")
    p.add_argument(
        "--first-worker-port",
        type=int,
        default=8801,
        help="workers listen on consecutive ports from here (default 8801; 0 = any free)",
    )
    p.add_argument("--check-ms", type=int, default=1000, help="health check interval (default 1000 ms)")
    p.add_argument("--print-config", action="store_true", help="print the rendered haproxy.cfg and exit")
    p.set_defaults(func=fleet_command)


def fleet_command(args: argparse.Namespace, cfg) -> None:
    """voice fleet: N local workers behind HAProxy (leastconn, /healthz checks), drained on Ctrl-C."""
    if args.workers < 1 or not 0 <= args.port <= 65535 or not 0 <= args.first_worker_port <= 65535 - args.workers:
        raise FleetError("--workers must be at least 1 and --port / --first-worker-port valid ports")
    if args.check_ms < 100:
        raise FleetError(f"--check-ms must be at least 100, got {args.check_ms}")
    passed = ([f"--config={args.config}"] if args.config else []) + [f"--set={kv}" for kv in args.set]
    if args.print_config:
        ports = [args.first_worker_port + i for i in range(args.workers)]
        print(render_config(args.port, ports, args.check_ms, cfg.server.max_sessions), end="")
        return
    run_fleet(
        Fleet(args.workers, args.port, args.first_worker_port, args.check_ms, cfg.server.max_sessions, tuple(passed))
    )
