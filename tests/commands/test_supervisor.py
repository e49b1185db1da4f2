"""The fleet's supervision rules on scripted timelines: restart, back-off, rolling order."""

from hypothesis import given, settings, strategies as st

from commands.supervisor import (
    Back,
    BackOff,
    DrainWorker,
    Exited,
    InRotation,
    KillWorker,
    Phase,
    RollingDone,
    RollingRestart,
    StartCause,
    StartWorker,
    Supervisor,
    Tick,
    backoff_s,
)
from voice.config import FleetConfig

SETTINGS = FleetConfig(restart_backoff_s=1.0, restart_backoff_max_s=8.0, start_timeout_s=100.0)
WORKERS = ("w1", "w2")


def fleet(*names: str) -> Supervisor:
    return Supervisor(names or WORKERS, SETTINGS)


def test_a_worker_that_exits_is_started_again_at_once_and_counted():
    sup = fleet()
    assert sup.observe(Exited("w1", 0, at=10.0)) == [StartWorker("w1", 1, StartCause.EXITED, 0)]
    assert sup.slots["w2"].phase is Phase.UP  # the other keeps serving, untouched
    assert sup.observe(Tick(at=30.0)) == []
    assert sup.observe(InRotation("w1", at=30.0)) == [Back("w1", 1)]
    assert sup.observe(Exited("w1", -9, at=50.0)) == [StartWorker("w1", 2, StartCause.EXITED, -9)]
    assert sup.observe(InRotation("w1", at=70.0)) == [Back("w1", 2)]
    assert sup.all_up()


def test_a_worker_that_crashes_on_start_up_backs_off_doubling_to_the_cap():
    sup = fleet()
    sup.observe(Exited("w1", -15, at=0.0))  # restart 1
    starts, t = [], 0.0
    for failure in range(1, 7):
        t += 2.0  # it crashes 2 s after each start
        assert sup.observe(Exited("w1", 1, at=t)) == [BackOff("w1", failure, min(8.0, 2.0 ** (failure - 1)), 1)]
        retry_at = sup.slots["w1"].retry_at
        assert sup.observe(Tick(at=retry_at - 0.01)) == []  # no start before the back-off is over
        [start] = sup.observe(Tick(at=retry_at))
        assert start.cause is StartCause.RETRY and start.slot == "w1"
        starts.append(start.restart)
        t = retry_at
    assert starts == [2, 3, 4, 5, 6, 7]
    # once back in rotation the count of failures in a row starts over
    assert sup.observe(InRotation("w1", at=t + 5)) == [Back("w1", 7)]
    sup.observe(Exited("w1", 0, at=t + 10))
    assert sup.observe(Exited("w1", 1, at=t + 11)) == [BackOff("w1", 1, 1.0, 1)]


def test_backoff_formula():
    assert [backoff_s(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_s(3, 0.5, 60.0) == 2.0


def test_a_worker_that_never_gets_healthy_is_killed_once_then_backs_off():
    sup = fleet()
    sup.observe(Exited("w2", -9, at=0.0))
    assert sup.observe(Tick(at=99.0)) == []
    assert sup.observe(Tick(at=100.0)) == [KillWorker("w2")]
    assert sup.observe(Tick(at=101.0)) == []  # killed once, then its exit is awaited
    assert sup.observe(Exited("w2", -9, at=101.5)) == [BackOff("w2", 1, 1.0, -9)]


def test_rolling_restart_drains_one_worker_at_a_time_in_order():
    sup = fleet("w1", "w2", "w3")
    assert sup.observe(RollingRestart(("w1", "w2", "w3"), at=0.0)) == [DrainWorker("w1")]
    assert sup.observe(Tick(at=5.0)) == []  # w1 still draining: nobody else
    assert sup.observe(Exited("w1", 0, at=20.0)) == [StartWorker("w1", 1, StartCause.ROLLING, 0)]
    assert sup.observe(Tick(at=30.0)) == []  # w1 loading: w2 waits
    assert sup.observe(InRotation("w1", at=40.0)) == [Back("w1", 1), DrainWorker("w2")]
    assert sup.observe(Exited("w2", 0, at=50.0)) == [StartWorker("w2", 1, StartCause.ROLLING, 0)]
    assert sup.observe(InRotation("w2", at=60.0)) == [Back("w2", 1), DrainWorker("w3")]
    sup.observe(Exited("w3", 0, at=70.0))
    assert sup.observe(InRotation("w3", at=80.0)) == [Back("w3", 1), RollingDone()]
    assert sup.observe(Tick(at=90.0)) == []
    assert [s.restarts for s in sup.slots.values()] == [1, 1, 1]


def test_a_worker_that_fails_to_come_back_holds_the_roll():
    sup = fleet()
    sup.observe(RollingRestart(WORKERS, at=0.0))
    sup.observe(Exited("w1", 0, at=10.0))
    assert sup.observe(Exited("w1", 2, at=12.0)) == [BackOff("w1", 1, 1.0, 2)]  # the new config is broken
    [retry] = sup.observe(Tick(at=13.0))
    assert retry == StartWorker("w1", 2, StartCause.RETRY)
    assert sup.observe(Exited("w1", 2, at=14.0)) == [BackOff("w1", 2, 2.0, 2)]
    assert sup.slots["w2"].phase is Phase.UP  # never drained while w1 is out
    sup.observe(Tick(at=16.0))
    assert sup.observe(InRotation("w1", at=40.0)) == [Back("w1", 3), DrainWorker("w2")]  # fixed: the roll goes on


def test_a_crash_during_a_roll_is_restarted_and_the_roll_waits_for_it():
    sup = fleet()
    sup.observe(RollingRestart(WORKERS, at=0.0))
    sup.observe(Exited("w1", 0, at=10.0))
    assert sup.observe(Exited("w2", -11, at=11.0)) == [StartWorker("w2", 1, StartCause.EXITED, -11)]
    assert sup.observe(InRotation("w1", at=20.0)) == [Back("w1", 1)]  # w2 still loading: no drain
    assert sup.observe(InRotation("w2", at=25.0)) == [Back("w2", 1), DrainWorker("w2")]


def test_a_second_rolling_restart_starts_over_from_the_first_worker():
    sup = fleet("w1", "w2", "w3")
    sup.observe(RollingRestart(("w1", "w2", "w3"), at=0.0))
    sup.observe(Exited("w1", 0, at=10.0))
    sup.observe(InRotation("w1", at=20.0))  # w2 drained now
    assert sup.observe(RollingRestart(("w1", "w2", "w3"), at=21.0)) == []  # w2 is out: wait
    sup.observe(Exited("w2", 0, at=22.0))
    assert sup.observe(InRotation("w2", at=30.0)) == [Back("w2", 1), DrainWorker("w1")]


def test_the_balancer_is_restarted_but_never_rolled():
    sup = fleet("w1", "w2", "balancer")
    assert sup.observe(Exited("balancer", -9, at=0.0)) == [StartWorker("balancer", 1, StartCause.EXITED, -9)]
    assert sup.observe(RollingRestart(WORKERS, at=0.5)) == []  # the balancer is out: no drain yet
    assert sup.observe(InRotation("balancer", at=1.0)) == [Back("balancer", 1), DrainWorker("w1")]


OBSERVATIONS = st.lists(
    st.tuples(
        st.sampled_from(["exit", "in_rotation", "tick", "roll"]),
        st.sampled_from(["w1", "w2", "w3"]),
        st.floats(0.0, 50.0),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OBSERVATIONS)
def test_never_two_workers_out_for_a_roll_and_never_a_start_inside_a_backoff(script):
    sup, t, alive = fleet("w1", "w2", "w3"), 0.0, {"w1", "w2", "w3"}
    for kind, name, dt in script:
        t += dt
        if kind == "exit":
            if name not in alive:
                continue  # only a running process exits
            obs = Exited(name, 1, t)
            alive.discard(name)
        elif kind == "in_rotation":
            if name not in alive or sup.slots[name].phase is not Phase.STARTING:
                continue
            obs = InRotation(name, t)
        elif kind == "tick":
            obs = Tick(t)
        else:
            obs = RollingRestart(("w1", "w2", "w3"), t)
        waiting_before = {n: s.retry_at for n, s in sup.slots.items() if s.phase is Phase.WAITING}
        for action in sup.observe(obs):
            if isinstance(action, DrainWorker):
                assert all(s.phase is Phase.UP for n, s in sup.slots.items() if n != action.slot), sup.slots
            elif isinstance(action, StartWorker):
                assert action.slot not in alive  # never two processes on one port
                if action.slot in waiting_before:
                    assert t >= waiting_before[action.slot]
                alive.add(action.slot)
            elif isinstance(action, KillWorker):
                assert action.slot in alive
        out = [n for n, s in sup.slots.items() if s.phase is not Phase.UP]
        assert len([n for n in out if sup.slots[n].phase is Phase.DRAINING]) <= 1
