import asyncio
import threading

import pytest

from voice.stack import NORMAL, URGENT, PriorityWorker


def test_urgent_calls_run_before_queued_normal_ones_and_in_order_within_a_priority():
    worker = PriorityWorker("test")
    gate, ran = threading.Event(), []
    blocker = worker.submit(gate.wait)  # holds the thread while the queue fills
    futures = [worker.submit(lambda i=i: ran.append(("normal", i)), NORMAL) for i in range(3)]
    futures += [worker.submit(lambda i=i: ran.append(("urgent", i)), URGENT) for i in range(2)]
    gate.set()
    for f in [blocker, *futures]:
        f.result(timeout=10)
    assert ran == [("urgent", 0), ("urgent", 1), ("normal", 0), ("normal", 1), ("normal", 2)]


def test_a_failing_call_reaches_its_caller_and_the_worker_keeps_serving():
    worker = PriorityWorker("test")

    async def main():
        with pytest.raises(ZeroDivisionError):
            await worker.run(lambda: 1 / 0)
        return await worker.run(lambda: 42, URGENT)

    assert asyncio.run(main()) == 42


def test_a_call_cancelled_while_queued_never_runs():
    worker = PriorityWorker("test")
    gate, ran = threading.Event(), []
    blocker = worker.submit(gate.wait)
    dropped = worker.submit(lambda: ran.append("dropped"))
    kept = worker.submit(lambda: ran.append("kept"))
    assert dropped.cancel()
    gate.set()
    blocker.result(timeout=10)
    kept.result(timeout=10)
    assert ran == ["kept"]


def test_waiting_counts_queued_calls_not_the_running_one():
    worker = PriorityWorker("test")
    gate, started = threading.Event(), threading.Event()
    running = worker.submit(lambda: (started.set(), gate.wait()))
    started.wait(10)
    assert worker.waiting() == 0
    queued = worker.submit(lambda: None)
    assert worker.waiting() == 1
    gate.set()
    running.result(timeout=10)
    queued.result(timeout=10)
    assert worker.waiting() == 0


def test_close_waits_for_the_running_call_drops_the_queued_ones_and_refuses_new_ones():
    """What the CLI relies on at exit: no worker thread is still inside a (native) call."""
    worker = PriorityWorker("test")
    gate, started, ran = threading.Event(), threading.Event(), []
    running = worker.submit(lambda: (started.set(), gate.wait(30), ran.append("running")))
    queued = worker.submit(lambda: ran.append("queued"))
    started.wait(10)
    closer = threading.Thread(target=worker.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # still waiting for the running call
    gate.set()
    closer.join(30)
    assert not closer.is_alive() and ran == ["running"] and running.done() and queued.cancelled()
    assert not worker._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(lambda: None).result(timeout=1)
