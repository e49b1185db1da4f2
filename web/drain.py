"""Graceful drain: when a session may be closed without cutting a turn, and when a worker is ready.

In: the events of one session as the server sends them (and the typed turns it receives), and
the worker's state (models loaded, draining, open sessions). Out: `TurnTracker.busy` (a turn has
begun and its `turn_end` has not been sent) and `readiness()` (what `/healthz` answers).
Pure rules, no I/O: the server carries them out (SIGTERM → unready at once, close each
session with 1001 at its first turn boundary, the rest at `server.drain_timeout_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

from voice.session_events import Speech, VadState
from web.protocol import ServerEvent, ends_turn

GOING_AWAY = 1001  # RFC 6455 "going away": the client reconnects (through the balancer: another worker)


class TurnTracker:
    """Whether one session is inside a turn, from the events that crossed its socket.

    A turn begins when the user's speech starts (`VadState` `Speech.START` sent) or a `text` turn
    arrives; it ends with the first event that closes it (`web.protocol.ends_turn`: its
    `turn_end`, its failure, or an empty final transcript — not speech, no reply follows).
    """

    def __init__(self) -> None:
        self.busy = False

    def received_text_turn(self) -> None:
        """A typed turn arrived."""
        self.busy = True

    def sent(self, event: ServerEvent) -> None:
        """An event went out to the client."""
        if isinstance(event, VadState) and event.state is Speech.START:
            self.busy = True
        elif ends_turn(event):
            self.busy = False


def may_close(tracker: TurnTracker, session_idle: bool, events_waiting: int) -> bool:
    """A draining session may close now: no turn begun, the pipeline idle, every event sent."""
    return not tracker.busy and session_idle and events_waiting == 0


@dataclass(frozen=True)
class Readiness:
    """What `/healthz` answers: 200 when `ready`, else 503 with the reason."""

    ready: bool
    reason: str  # ready | loading | draining | full

    @property
    def status(self) -> int:
        return 200 if self.ready else 503


def readiness(loaded: bool, draining: bool, sessions: int, max_sessions: int) -> Readiness:
    """Ready only with the models loaded, not draining, and below the session cap."""
    if draining:
        return Readiness(False, "draining")
    if not loaded:
        return Readiness(False, "loading")
    if sessions >= max_sessions:
        return Readiness(False, "full")
    return Readiness(True, "ready")
