"""A worker's /metrics says how often the fleet restarted it."""

from prometheus_client.parser import text_string_to_metric_families

from web.metrics import RESTARTS_ENV, ServerMetrics


def restarts_metric() -> float:
    text = ServerMetrics(dict).render().decode()
    [value] = [
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "voice_worker_restarts"
    ]
    return value


def test_restart_count_comes_from_the_fleet(monkeypatch):
    monkeypatch.setenv(RESTARTS_ENV, "3")
    assert restarts_metric() == 3
    monkeypatch.delenv(RESTARTS_ENV)
    assert restarts_metric() == 0  # a worker started by hand
