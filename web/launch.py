"""Start `voice serve` in a child process and wait for its URL (soak runs and tests).

In: extra CLI arguments. Out: the process and its `http://…/` URL, read from the line the
server prints when it listens. Raises `RuntimeError` with the server's output if it
does not come up.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time


def spawn_server(*args: str, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`voice serve --port 0 ARGS…` as a child; returns (process, page URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "commands.cli", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen, deadline = [], time.time() + timeout_s
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(r"open (http://\S+/)", line):
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("server did not start:\n" + "".join(seen))


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0) -> str:
    """Ctrl-C the server; returns what it printed after starting."""
    proc.send_signal(2)
    out, _ = proc.communicate(timeout=timeout_s)
    return out
