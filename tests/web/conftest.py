"""A real `voice serve` on 127.0.0.1 and a random port, shared by the web tests."""

import pytest

from commands.launch import spawn_server, stop_server


@pytest.fixture(scope="session")
def server(stack):  # `stack` prepares the models first
    """The server process and its page URL."""
    proc, url = spawn_server("--set", "server.max_sessions=6")
    yield proc, url
    out = stop_server(proc)  # Ctrl-C must shut down cleanly
    assert proc.returncode == 0, out
    assert "server stopped" in out


@pytest.fixture(scope="session")
def server_url(server):
    return server[1]
