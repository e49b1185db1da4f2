"""Start `voice serve` in a child process and wait for its URL (soak, fleet and tests).

In: extra CLI arguments. Out: the process and its `http://…/` URL, read from the line the
server prints when it is ready. Raises `ServerStartError` if it does not come up: the
server's own `error: …` line when it printed one (a dead LLM server, a port in use), else its
output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import IO

from voice.errors import VoiceError


class ServerStartError(VoiceError, RuntimeError):
    """The child `voice serve` exited or stayed silent instead of becoming ready."""


def start_server(
    *args: str, own_group: bool = False, log: IO | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`voice serve ARGS…` as a child (pass `--port`), its output on a pipe (see `wait_ready`) or
    into `log`; `env` is added to this process's environment. `own_group`: a terminal's Ctrl-C
    does not reach it (its parent stops it, e.g. by a drain)."""
    return subprocess.Popen(
        [sys.executable, "-m", "commands.cli", "serve", *args],
        stdout=subprocess.PIPE if log is None else log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=own_group,
    )


def wait_ready(proc: subprocess.Popen, timeout_s: float = 180.0) -> str:
    """The page URL once the server says its models are loaded; kills it and raises if it does not."""
    seen, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(r"open (http://\S+/)", line):
            return m.group(1)
    proc.kill()
    proc.wait()
    said = [line.removeprefix("error: ").strip() for line in seen if line.startswith("error: ")]
    raise ServerStartError(
        f"the server did not start: {said[-1]}" if said else "server did not start:\n" + "".join(seen)
    )


def spawn_server(*args: str, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`voice serve --port 0 ARGS…` as a child; returns (process, page URL)."""
    proc = start_server("--port", "0", *args)
    return proc, wait_ready(proc, timeout_s)


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0, sig: int = signal.SIGINT) -> str:
    """Ctrl-C the server (or `sig`: SIGTERM drains first); returns what it printed after starting."""
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout_s)
    return out
