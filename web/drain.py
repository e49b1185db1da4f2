"""Graceful drain: when a session may be closed without cutting a turn, and when a worker is ready.

In: the protocol messages of one session as the server sends and receives them, and the
worker's state (models loaded, draining, open sessions). Out: `TurnTracker.busy` (a turn has
begun and its `turn_end` has not been sent) and `readiness()` (what `/healthz` answers).
Pure rules, no I/O: the server carries them out (SIGTERM → unready at once, close each
session with 1001 at its first turn boundary, the rest at `server.drain_timeout_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

GOING_AWAY = 1001  # RFC 6455 "going away": the client reconnects (through the balancer: another worker)


class TurnTracker:
    """Whether one session is inside a turn, from the messages that crossed its socket.

    A turn begins when the user's speech starts (`vad` speech_start sent) or a `text` turn
    arrives; it ends when its `turn_end` is sent, when the final transcript is empty (not
    speech: no reply follows) or when the turn fails (`error` turn_failed / asr_failed).
    """

    ENDING_ERRORS = ("turn_failed", "asr_failed")

    def __init__(self) -> None:
        self.busy = False

    def received_text_turn(self) -> None:
        """A typed turn arrived."""
        self.busy = True

    def sent(self, message: dict) -> None:
        """A JSON message went out to the client (binary audio does not change the state)."""
        kind = message.get("type")
        if kind == "vad" and message.get("state") == "speech_start":
            self.busy = True
        elif kind == "turn_end":
            self.busy = False
        elif kind == "transcript" and message.get("final") and not message.get("text"):
            self.busy = False
        elif kind == "error" and message.get("code") in self.ENDING_ERRORS:
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
