"""Fleet supervision: when a worker is started again, drained or killed. Pure.

In: timestamped observations of the fleet's processes — a process exited (`Exited`), a
(re)started process is back in the balancer's rotation (`InRotation`), time passed (`Tick`),
a rolling restart was asked for (`RollingRestart`, SIGHUP). Out: actions for `voice fleet` to
carry out (`StartWorker`, `DrainWorker`, `KillWorker`) and to report (`BackOff`, `Back`,
`RollingDone`). No process, no clock, no I/O: tests drive it with scripted timelines. Every
slot (a worker's port, or the balancer) begins up, in rotation.

The rules:
- A slot that exits while in rotation (drained, crashed, killed) is started again at once.
- A slot that exits before it is back in rotation failed to start: the n-th failed start in a
  row waits min(restart_backoff_max_s, restart_backoff_s * 2**(n-1)) before the next start,
  so a worker that crashes on start-up is retried ever more slowly, never in a tight loop.
  One that is not in rotation `start_timeout_s` after its start is killed (a failed start).
- Rolling restart: the named slots are drained one at a time, in order, each only while every
  slot is in rotation, and restarted when they exit; so never two are out at once, and a
  worker that fails to come back holds the roll (reported, retried with back-off) instead of
  taking the next one down. A second request restarts the roll from the first slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from voice.config import FleetConfig


class Phase(Enum):
    """Where one slot stands."""

    UP = "up"  # in the balancer's rotation
    STARTING = "starting"  # started, not yet in rotation
    DRAINING = "draining"  # told to drain for a rolling restart; started again when it exits
    WAITING = "waiting"  # failed to start; started again at `retry_at`


class StartCause(Enum):
    """Why a slot is started again (for the report)."""

    EXITED = "exited"  # it exited while in rotation
    ROLLING = "rolling restart"  # it was drained for a rolling restart
    RETRY = "retry"  # its back-off after a failed start is over


# ---- observations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Exited:
    """The slot's process ended with `code` (negative: killed by that signal)."""

    slot: str
    code: int
    at: float


@dataclass(frozen=True)
class InRotation:
    """The slot's (re)started process is healthy and the balancer sends it sessions."""

    slot: str
    at: float


@dataclass(frozen=True)
class Tick:
    """Time passed."""

    at: float


@dataclass(frozen=True)
class RollingRestart:
    """Restart `slots` one at a time, each drained first."""

    slots: tuple[str, ...]
    at: float


Observation = Exited | InRotation | Tick | RollingRestart


# ---- actions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartWorker:
    """Start the slot's process again on its port (kept out of rotation until it is healthy);
    `restart` counts the starts after the first one."""

    slot: str
    restart: int
    cause: StartCause
    code: int | None = None  # the exit code that caused it (EXITED, ROLLING)


@dataclass(frozen=True)
class DrainWorker:
    """SIGTERM: the worker finishes its running turns, closes its sessions (1001) and exits."""

    slot: str


@dataclass(frozen=True)
class KillWorker:
    """Not in rotation `start_timeout_s` after its start: kill it (its exit is a failed start)."""

    slot: str


@dataclass(frozen=True)
class BackOff:
    """The slot failed to start `failed_starts` times in a row (last exit `code`); the next start
    comes `delay_s` later."""

    slot: str
    failed_starts: int
    delay_s: float
    code: int


@dataclass(frozen=True)
class Back:
    """The slot is in rotation again after restart number `restart`."""

    slot: str
    restart: int


@dataclass(frozen=True)
class RollingDone:
    """Every slot of the rolling restart was drained, restarted and is back in rotation."""


Action = StartWorker | DrainWorker | KillWorker | BackOff | Back | RollingDone


def backoff_s(failed_starts: int, first_s: float, max_s: float) -> float:
    """Wait before the next start after `failed_starts` failures in a row:
    min(max_s, first_s * 2**(failed_starts - 1))."""
    return min(max_s, first_s * 2 ** (failed_starts - 1))


@dataclass
class Slot:
    """One supervised process's state."""

    phase: Phase = Phase.UP
    restarts: int = 0  # starts after the first
    failed_starts: int = 0  # exits before rotation, in a row
    started_at: float = 0.0
    retry_at: float = 0.0
    kill_sent: bool = False


@dataclass
class Supervisor:
    """The supervision rules over named slots; `observe(…)` returns the actions to carry out."""

    names: tuple[str, ...]
    settings: FleetConfig = field(default_factory=FleetConfig)
    slots: dict[str, Slot] = field(default_factory=dict)
    rolling: list[str] = field(default_factory=list)  # slots still to drain, in order
    rolling_active: bool = False

    def __post_init__(self) -> None:
        self.slots = {name: Slot() for name in self.names}

    def observe(self, obs: Observation) -> list[Action]:
        """Take one observation; the actions it calls for, in order."""
        if isinstance(obs, Exited):
            actions = self._exited(obs)
        elif isinstance(obs, InRotation):
            actions = self._in_rotation(obs)
        elif isinstance(obs, Tick):
            actions = self._tick(obs.at)
        else:
            self.rolling, self.rolling_active = [s for s in obs.slots if s in self.slots], True
            actions = []
        return actions + self._roll()

    def all_up(self) -> bool:
        """Every slot is in rotation."""
        return all(slot.phase is Phase.UP for slot in self.slots.values())

    def _start(self, name: str, at: float, cause: StartCause, code: int | None = None) -> StartWorker:
        slot = self.slots[name]
        slot.phase, slot.started_at, slot.kill_sent = Phase.STARTING, at, False
        slot.restarts += 1
        return StartWorker(name, slot.restarts, cause, code)

    def _exited(self, obs: Exited) -> list[Action]:
        slot = self.slots[obs.slot]
        if slot.phase is Phase.UP:
            return [self._start(obs.slot, obs.at, StartCause.EXITED, obs.code)]
        if slot.phase is Phase.DRAINING:
            return [self._start(obs.slot, obs.at, StartCause.ROLLING, obs.code)]
        if slot.phase is Phase.STARTING:
            slot.failed_starts += 1
            delay = backoff_s(slot.failed_starts, self.settings.restart_backoff_s, self.settings.restart_backoff_max_s)
            slot.phase, slot.retry_at = Phase.WAITING, obs.at + delay
            return [BackOff(obs.slot, slot.failed_starts, delay, obs.code)]
        return []  # WAITING has no process: a stale report

    def _in_rotation(self, obs: InRotation) -> list[Action]:
        slot = self.slots[obs.slot]
        if slot.phase is not Phase.STARTING:
            return []
        slot.phase, slot.failed_starts = Phase.UP, 0
        return [Back(obs.slot, slot.restarts)]

    def _tick(self, at: float) -> list[Action]:
        actions: list[Action] = []
        for name, slot in self.slots.items():
            if slot.phase is Phase.WAITING and at >= slot.retry_at:
                actions.append(self._start(name, at, StartCause.RETRY))
            elif slot.phase is Phase.STARTING and not slot.kill_sent:
                if at - slot.started_at >= self.settings.start_timeout_s:
                    slot.kill_sent = True
                    actions.append(KillWorker(name))
        return actions

    def _roll(self) -> list[Action]:
        """The next drain of a rolling restart, once every slot is in rotation."""
        if not self.rolling_active or not self.all_up():
            return []
        if not self.rolling:
            self.rolling_active = False
            return [RollingDone()]
        name = self.rolling.pop(0)
        self.slots[name].phase = Phase.DRAINING
        return [DrainWorker(name)]
