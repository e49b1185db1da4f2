"""HAProxy in front of a local fleet: its config, its process and its runtime API.

In: the balancer's port, the workers' ports, the health-check interval and the session cap.
Out: `deploy/haproxy.cfg.template` rendered for them (`render_config`), HAProxy running it
(`Balancer.start`), and through its admin socket (the runtime API) each worker's state as
HAProxy sees it (`states`: UP, DOWN, MAINT, DRAIN…) and a way to take a worker out of rotation
and back (`set_state`). A runtime command is one round trip on a unix socket.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import string
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from voice.errors import VoiceError

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg.template"
HOST = "127.0.0.1"
BACKEND = "workers"
ADMIN_SOCKET_EXAMPLE = Path("/run/haproxy/admin.sock")  # what `--print-config` shows


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


def server_name(index: int) -> str:
    """HAProxy's name for the fleet's `index`-th worker (w1, w2, …)."""
    return f"w{index + 1}"


def render_config(
    bind_port: int, worker_ports: list[int], check_ms: int, max_sessions: int, admin_socket: Path = ADMIN_SOCKET_EXAMPLE
) -> str:
    """deploy/haproxy.cfg.template for workers on 127.0.0.1 at `worker_ports`."""
    servers = "\n".join(f"    server {server_name(i)} {HOST}:{port}" for i, port in enumerate(worker_ports))
    return string.Template(TEMPLATE.read_text()).substitute(
        bind=f"{HOST}:{bind_port}",
        servers=servers,
        check_ms=check_ms,
        max_sessions=max_sessions,
        admin_socket=admin_socket,
    )


@dataclass
class Balancer:
    """One HAProxy process running a rendered config from `workdir`."""

    binary: str
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def log(self) -> Path:
        return self.workdir / "haproxy.log"

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "haproxy.sock"

    def write_config(self, bind_port: int, worker_ports: list[int], check_ms: int, max_sessions: int) -> None:
        """Render the template for this fleet (its admin socket in `workdir`)."""
        self.config.write_text(render_config(bind_port, worker_ports, check_ms, max_sessions, self.admin_socket))

    def start(self) -> subprocess.Popen:
        """Run HAProxy in the foreground of its own session (its output in `log`)."""
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc

    def wait_up(self, servers: list[str], timeout_s: float) -> None:
        """Wait until HAProxy has every server UP; FleetError if it exits or they are not by `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FleetError(f"haproxy exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            states = self.states()
            if states is not None and all(is_up(states.get(s, "")) for s in servers):
                return
            time.sleep(0.2)
        raise FleetError(f"haproxy did not have every worker UP within {timeout_s:.0f} s: {self.states()}")

    def command(self, line: str) -> str | None:
        """One runtime API command's answer; None when HAProxy does not answer (not running)."""
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5.0)
                sock.connect(str(self.admin_socket))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str] | None:
        """Each worker's status as HAProxy has it (`UP`, `UP 1/2`, `DOWN`, `MAINT`, `DRAIN`…); None
        when HAProxy does not answer."""
        text = self.command("show stat")
        if text is None or not text.startswith("#"):
            return None
        rows = csv.DictReader(io.StringIO(text[1:].lstrip()))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == BACKEND and r["svname"] != "BACKEND"}

    def set_state(self, server: str, state: str) -> None:
        """`ready`, `drain` (no new sessions) or `maint` (no traffic, no checks); a no-op while
        HAProxy is down (a restarted HAProxy checks every worker itself)."""
        self.command(f"set server {BACKEND}/{server} state {state}")

    def stop(self) -> None:
        """Terminate HAProxy (its tunnels close)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def is_up(status: str) -> bool:
    """HAProxy sends this server sessions ("UP", or "UP 1/2" while one failed check would take it down)."""
    return status.split(" ")[0] == "UP"
