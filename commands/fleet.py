"""`voice fleet`: N local voice workers behind HAProxy, supervised, on one machine.

In: a worker count, the balancer's port, the workers' first port (consecutive ports; 0: any
free ones), the config overrides every worker gets and `[fleet]` (restart back-off). Out: the
workers (`voice serve`, each loading its own models, in parallel; output
in `worker-PORT.log` of the fleet's folder), `deploy/haproxy.cfg.template` rendered for them
and HAProxy running it. Then it supervises (rules in `commands/supervisor.py`, carried out
here): a worker that exits is started again on its port, kept out of HAProxy's rotation
(`maint`) until its /healthz is 200; one that keeps failing to start is retried with back-off;
a dead HAProxy is started again; SIGHUP restarts the workers one at a time, each drained first.
Ctrl-C or SIGTERM drains the workers (SIGTERM to each: running turns finish) and stops HAProxy.
Everything binds 127.0.0.1. Costs a few HTTP and runtime-API round trips per poll.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from commands.balancer import HOST, Balancer, FleetError, find_haproxy, is_up, render_config, server_name
from commands.launch import start_server
from commands.supervisor import (
    Action,
    Back,
    BackOff,
    DrainWorker,
    Exited,
    InRotation,
    KillWorker,
    Observation,
    Phase,
    RollingDone,
    RollingRestart,
    StartCause,
    StartWorker,
    Supervisor,
    Tick,
)
from voice.config import FleetConfig, ServerConfig
from web.metrics import RESTARTS_ENV

BALANCER = "haproxy"  # the supervisor's slot for the balancer
POLL_S = 0.25  # how often the fleet looks at its processes (a poll is a few loopback round trips)


@dataclass
class Worker:
    """One `voice serve` process of the fleet, on a fixed port."""

    name: str  # HAProxy's server name (w1, w2, …)
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def label(self) -> str:
        pid = f", pid {self.proc.pid}" if self.proc is not None else ""
        return f"worker {self.name} (port {self.port}{pid})"


@dataclass
class Fleet:
    """Workers and the HAProxy in front of them; `start()`, then `supervise(…)`; `stop()` drains."""

    workers: int = 2
    port: int = ServerConfig.port  # the balancer takes the port one server would have
    first_worker_port: int = 8801  # 0: any free ports
    check_ms: int = 1000
    max_sessions: int = ServerConfig.max_sessions
    worker_args: tuple[str, ...] = ()
    settings: FleetConfig = field(default_factory=FleetConfig)
    say: Callable[[str], None] = lambda line: print(time.strftime("[%H:%M:%S] ") + line, flush=True)
    members: list[Worker] = field(default_factory=list)
    balancer: Balancer | None = None
    workdir: Path | None = None  # made by `start()` unless given

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> None:
        """Start the workers together, wait until each is healthy, then HAProxy with every worker UP."""
        self.workdir = self.workdir or Path(tempfile.mkdtemp(prefix="voice-fleet-"))
        self.balancer = Balancer(find_haproxy(), self.workdir)
        ports = (
            [self.first_worker_port + i for i in range(self.workers)]
            if self.first_worker_port
            else free_ports(self.workers)
        )
        self.members = [Worker(server_name(i), port) for i, port in enumerate(ports)]
        try:
            for worker in self.members:
                self._spawn(worker, restart=0)
            for worker in self.members:
                self._wait_healthy(worker)
            self.balancer.write_config(self.port, ports, self.check_ms, self.max_sessions)
            self.balancer.start()
            self.balancer.wait_up([w.name for w in self.members], timeout_s=60.0)
        except BaseException:
            self.stop()
            raise

    def log_path(self, worker: Worker) -> Path:
        """Where a worker's output goes (every start appends)."""
        return self.workdir / f"worker-{worker.port}.log"

    def _spawn(self, worker: Worker, restart: int) -> None:
        args = ("--host", HOST, "--port", str(worker.port), "--set", f"server.max_sessions={self.max_sessions}")
        with self.log_path(worker).open("a") as log:
            log.write(f"--- voice fleet: start {restart + 1} of {worker.name} on port {worker.port} ---\n")
            log.flush()
            worker.proc = start_server(
                *args, *self.worker_args, own_group=True, log=log, env={RESTARTS_ENV: str(restart)}
            )

    def _wait_healthy(self, worker: Worker) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise FleetError(
                    f"{worker.label()} exited ({worker.proc.returncode}) while starting; "
                    f"its output ({self.log_path(worker)}):\n{self.log_path(worker).read_text()[-3000:]}"
                )
            if http_status(worker.url + "healthz") == 200:
                return
            time.sleep(POLL_S)
        raise FleetError(f"{worker.label()} was not healthy within fleet.start_timeout_s; see {self.log_path(worker)}")

    def supervisor(self) -> Supervisor:
        """The supervision rules over this fleet's slots (every worker and the balancer)."""
        return Supervisor((*(w.name for w in self.members), BALANCER), self.settings)

    def supervise(self, stopping: Callable[[], bool], rolling_asked: Callable[[], bool]) -> None:
        """Observe the processes and carry out the supervisor's actions until `stopping()`;
        `rolling_asked()` is true once per request for a rolling restart (SIGHUP)."""
        sup = self.supervisor()
        while not stopping():
            for obs in self.observations(sup, time.monotonic(), rolling_asked()):
                for action in sup.observe(obs):
                    self.carry_out(action)
            time.sleep(POLL_S)

    def observations(self, sup: Supervisor, now: float, rolling: bool) -> list[Observation]:
        """What changed since the last poll: exits, slots back in rotation, a rolling request, the time."""
        out: list[Observation] = []
        for name, proc in [(w.name, w.proc) for w in self.members] + [(BALANCER, self.balancer.proc)]:
            if proc is not None and proc.returncode is None and proc.poll() is not None:
                out.append(Exited(name, proc.returncode, now))
        states = self.balancer.states()
        for worker in self.members:
            if sup.slots[worker.name].phase is Phase.STARTING and worker.proc.returncode is None:
                if http_status(worker.url + "healthz") == 200:
                    self.balancer.set_state(worker.name, "ready")  # HAProxy checks it again from now on
                    if states is not None and is_up(states.get(worker.name, "")):
                        out.append(InRotation(worker.name, now))
        if sup.slots[BALANCER].phase is Phase.STARTING and states is not None:
            out.append(InRotation(BALANCER, now))
        if rolling:
            out.append(RollingRestart(tuple(w.name for w in self.members), now))
        return out + [Tick(now)]

    def carry_out(self, action: Action) -> None:
        """Do (and report) one supervisor action."""
        if isinstance(action, StartWorker):
            self._restart(action)
        elif isinstance(action, DrainWorker):
            worker = self._member(action.slot)
            self.say(f"rolling restart: draining {worker.label()}")
            self.balancer.set_state(worker.name, "drain")  # no new sessions; its open ones stay
            worker.proc.send_signal(signal.SIGTERM)
        elif isinstance(action, KillWorker):
            proc = self.balancer.proc if action.slot == BALANCER else self._member(action.slot).proc
            self.say(f"{action.slot} was not healthy within fleet.start_timeout_s: killing it")
            proc.kill()
        elif isinstance(action, BackOff):
            where = self.balancer.log if action.slot == BALANCER else self.log_path(self._member(action.slot))
            self.say(
                f"{action.slot} {describe_exit(action.code)} before it was healthy ({action.failed_starts} "
                f"failed start{'s' if action.failed_starts > 1 else ''} in a row); next start in "
                f"{action.delay_s:g} s; its output: {where}"
            )
        elif isinstance(action, Back):
            label = BALANCER if action.slot == BALANCER else self._member(action.slot).label()
            self.say(f"{label} is back in rotation (restart {action.restart})")
        elif isinstance(action, RollingDone):
            self.say("rolling restart done: every worker restarted")

    def _restart(self, action: StartWorker) -> None:
        before = (
            "its back-off is over"
            if action.cause is StartCause.RETRY
            else f"{describe_exit(action.code)}{' (rolling restart)' if action.cause is StartCause.ROLLING else ''}"
        )
        if action.slot == BALANCER:
            self.balancer.start()
            self.say(f"haproxy {before}: started again (pid {self.balancer.proc.pid}, restart {action.restart})")
            return
        worker = self._member(action.slot)
        self.balancer.set_state(worker.name, "maint")  # out of rotation until its /healthz is 200
        self._spawn(worker, action.restart)
        self.say(
            f"worker {worker.name} (port {worker.port}) {before}: started again as {worker.label()}, "
            f"restart {action.restart}"
        )

    def _member(self, name: str) -> Worker:
        return next(w for w in self.members if w.name == name)

    def stop(self, drain_timeout_s: float = 120.0) -> dict[str, int | None]:
        """SIGTERM every live worker (each drains), wait for them, then stop HAProxy; their exit codes."""
        live = [w for w in self.members if w.proc is not None and w.proc.poll() is None]
        for worker in live:
            worker.proc.send_signal(signal.SIGTERM)
        for worker in live:
            try:
                worker.proc.wait(timeout=drain_timeout_s)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
        if self.balancer is not None:
            self.balancer.stop()
        return {w.name: w.proc.returncode if w.proc else None for w in self.members}


def describe_exit(code: int | None) -> str:
    """An exit code as words: `exited (0)`, `was killed (SIGKILL)`."""
    if code is not None and code < 0:
        return f"was killed ({signal.Signals(-code).name})"
    return f"exited ({code})"


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (the workers bind them a moment later)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
    """Start the fleet, say where it is, supervise it until Ctrl-C or SIGTERM, then drain it."""
    stop, roll = [], []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGHUP, lambda *_: roll.append(True))
    fleet.say(f"starting {fleet.workers} workers (each loads its models) and haproxy…")
    fleet.start()
    workers = ", ".join(w.label() for w in fleet.members)
    fleet.say(
        f"fleet ready: open {fleet.url}  (websocket: ws://{HOST}:{fleet.port}/ws; {workers}, each with "
        f"/healthz and /metrics; haproxy pid {fleet.balancer.proc.pid}, config {fleet.balancer.config}); "
        f"rolling restart: kill -HUP {os.getpid()}; stop: Ctrl-C or kill {os.getpid()}"
    )

    def rolling_asked() -> bool:
        if roll:
            roll.clear()
            fleet.say("SIGHUP: rolling restart, one worker at a time")
            return True
        return False

    try:
        fleet.supervise(lambda: bool(stop), rolling_asked)
    except KeyboardInterrupt:
        pass
    finally:  # whatever ends the loop, no worker or HAProxy is left behind
        fleet.say("draining the workers…")
        fleet.stop()
        fleet.say("fleet stopped")


def add_fleet_parser(sub, common: argparse.ArgumentParser) -> None:
    """`voice fleet`'s arguments (on the CLI's subparsers)."""
    p = sub.add_parser("fleet", parents=[common], help="N local workers behind HAProxy, supervised (try a fleet)")
    p.add_argument("--workers", type=int, default=Fleet.workers, help="worker processes (default %(default)s)")
    p.add_argument("--port", type=int, default=Fleet.port, help="the balancer's port (default %(default)s)")
    p.add_argument(
        "--first-worker-port",
        type=int,
        default=Fleet.first_worker_port,
        help="workers listen on consecutive ports from here (default %(default)s; 0 = any free)",
    )
    p.add_argument(
        "--check-ms", type=int, default=Fleet.check_ms, help="health check interval (default %(default)s ms)"
    )
    p.add_argument("--print-config", action="store_true", help="print the rendered haproxy.cfg and exit")
    p.set_defaults(func=fleet_command)


def fleet_command(args: argparse.Namespace, cfg) -> None:
    """voice fleet: N local workers behind HAProxy (leastconn, /healthz checks), supervised, drained on Ctrl-C."""
    if args.workers < 1 or not 0 <= args.port <= 65535 or not 0 <= args.first_worker_port <= 65535 - args.workers:
        raise FleetError("--workers must be at least 1 and --port / --first-worker-port valid ports")
    if args.check_ms < 100:
        raise FleetError(f"--check-ms must be at least 100, got {args.check_ms}")
    f = cfg.fleet
    if not 0 < f.restart_backoff_s <= f.restart_backoff_max_s or f.start_timeout_s <= 0:
        raise FleetError(
            "[fleet] needs 0 < restart_backoff_s <= restart_backoff_max_s and start_timeout_s > 0, got "
            f"{f.restart_backoff_s}, {f.restart_backoff_max_s}, {f.start_timeout_s}"
        )
    passed = ([f"--config={args.config}"] if args.config else []) + [f"--set={kv}" for kv in args.set]
    if args.print_config:
        ports = [args.first_worker_port + i for i in range(args.workers)]
        print(render_config(args.port, ports, args.check_ms, cfg.server.max_sessions), end="")
        return
    run_fleet(
        Fleet(
            args.workers,
            args.port,
            args.first_worker_port,
            args.check_ms,
            cfg.server.max_sessions,
            tuple(passed),
            cfg.fleet,
        )
    )
