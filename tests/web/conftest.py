"""A real `voice serve` on 127.0.0.1 and a random port, shared by the web tests."""
import os
import re
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="session")
def server_url(stack):  # `stack` prepares the models first
    proc = subprocess.Popen([sys.executable, "-m", "voice.cli", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url, deadline, seen = None, time.time() + 120, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(r"open (http://\S+/)", line):
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(seen))
    yield url
    proc.send_signal(2)  # Ctrl-C: must shut down cleanly
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "server stopped" in out
