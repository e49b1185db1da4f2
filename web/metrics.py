"""A worker's Prometheus metrics: what `/metrics` answers, in the Prometheus text format.

In: the server's session and turn events (counted as they happen) and, at scrape time, the
shared models' queues and the decode scheduler's totals. Out: `render()`, the text format of
one registry per server (not the process-global one, so tests can run several servers).
Costs a few microseconds per event; a scrape reads a handful of counters.
"""

from __future__ import annotations

import os
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# From a sub-second turn gap (a server with spare cores) to tens of seconds (an overloaded one).
TURN_GAP_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0)
ACCEPTANCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESTARTS_ENV = "VOICE_WORKER_RESTARTS"  # `voice fleet` tells a worker it starts on its port how often before


def rss_bytes() -> int:
    """This process's resident memory (its peak where /proc is missing)."""
    import resource

    try:
        with open("/proc/self/status") as f:
            return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_restarts() -> int:
    """How often `voice fleet` has started this worker's port again (RESTARTS_ENV; 0 outside a fleet)."""
    value = os.environ.get(RESTARTS_ENV, "0")
    return int(value) if value.isdigit() else 0


class _LiveCollector:
    """Figures read when scraped: queue depths and the decode scheduler's totals."""

    def __init__(self, read: Callable[[], dict]) -> None:
        self.read = read

    def collect(self):
        live = self.read()
        queues = GaugeMetricFamily("voice_queue_depth", "Calls waiting for a shared model worker", labels=["stage"])
        for stage, depth in live.get("queues", {}).items():
            queues.add_metric([stage], depth)
        yield queues
        yield GaugeMetricFamily("voice_sessions", "Open voice sessions", value=live.get("sessions", 0))
        yield GaugeMetricFamily(
            "voice_turns_in_progress",
            "Turns begun and not yet ended (speech heard or text received, turn_end not yet sent)",
            value=live.get("turns_in_progress", 0),
        )
        yield GaugeMetricFamily(
            "voice_draining",
            "1 while the worker drains (SIGTERM): it takes no new sessions",
            value=1 if live.get("draining") else 0,
        )
        decode = live.get("decode")
        if decode:
            yield CounterMetricFamily(
                "voice_decode_tokens", "Reply tokens the decoder emitted", value=decode["tokens_out"]
            )
            yield CounterMetricFamily(
                "voice_decode_busy_seconds", "Seconds the decoder spent in forwards", value=decode["busy_s"]
            )
            yield CounterMetricFamily("voice_decode_steps", "Batched decode steps", value=decode["steps"])
            rate = decode["tokens_out"] / decode["busy_s"] if decode["busy_s"] > 0 else 0.0
            yield GaugeMetricFamily(
                "voice_decode_tokens_per_second",
                "Reply tokens per busy second over the worker's life (rate() of the two counters gives a window)",
                value=rate,
            )


class ServerMetrics:
    """Counters, gauges and histograms of one voice worker."""

    def __init__(self, read_live: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_opened = Counter("voice_sessions_opened", "Sessions started", registry=r)
        self.sessions_refused = Counter("voice_sessions_refused", "Connections refused", ["reason"], registry=r)
        self.sessions_going_away = Counter(
            "voice_sessions_going_away", "Sessions closed with 1001 (going away) by a drain", registry=r
        )
        self.turns = Counter("voice_turns", "Turns ended, by outcome", ["outcome"], registry=r)
        self.turn_gap = Histogram(
            "voice_turn_gap_seconds",
            "End of the user's speech to the first reply audio",
            buckets=TURN_GAP_BUCKETS_S,
            registry=r,
        )
        self.acceptance = Histogram(
            "voice_turn_draft_acceptance", "Accepted / drafted tokens per turn", buckets=ACCEPTANCE_BUCKETS, registry=r
        )
        Gauge(
            "voice_worker_restarts",
            "Times `voice fleet` started this worker's port again (drained, crashed or killed before; 0: first start)",
            registry=r,
        ).set(worker_restarts())
        r.register(_LiveCollector(read_live))

    def turn_ended(self, metrics: dict) -> None:
        """Count one `turn_end`: its outcome, gap (when audio went out) and draft acceptance."""
        outcome = "interrupted" if metrics.get("interrupted") else "answered"
        if metrics.get("turn_gap_ms") is None and outcome == "answered":
            outcome = "silent"  # ended without reply audio
        self.turns.labels(outcome).inc()
        if metrics.get("turn_gap_ms") is not None:
            self.turn_gap.observe(metrics["turn_gap_ms"] / 1000.0)
        if metrics.get("acceptance") is not None and metrics.get("mean_draft_len"):
            self.acceptance.observe(metrics["acceptance"])

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
