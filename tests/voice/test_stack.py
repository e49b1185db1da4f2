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


def test_queued_batched_calls_of_one_key_and_priority_run_together_up_to_the_limit():
    worker = PriorityWorker("test")
    gate, calls = threading.Event(), []

    def double(items):
        calls.append(list(items))
        return [2 * i for i in items]

    async def main():
        worker.submit(gate.wait)  # holds the thread while the queue fills
        asks = [(1, "a", NORMAL), (2, "b", NORMAL), (3, "a", NORMAL), (4, "a", URGENT), (5, "a", NORMAL)]
        asks += [(6, "a", NORMAL), (7, None, NORMAL), (8, None, NORMAL)]
        runs = [asyncio.ensure_future(worker.run_batched(double, i, key, 3, p)) for i, key, p in asks]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*runs)

    assert asyncio.run(main()) == [2, 4, 6, 8, 10, 12, 14, 16]  # each caller gets its own item's result
    # urgent first; then the oldest normal "a" with the next two of its key; key None runs alone
    assert calls == [[4], [1, 3, 5], [2], [6], [7], [8]]


def test_a_failing_batch_reaches_every_caller_and_a_cancelled_item_is_left_out():
    worker = PriorityWorker("test")
    gate, calls = threading.Event(), []

    def fail(items):
        calls.append(list(items))
        raise ValueError("bad batch")

    async def main():
        worker.submit(gate.wait)
        runs = [asyncio.ensure_future(worker.run_batched(fail, i, "k", 4)) for i in range(3)]
        await asyncio.sleep(0)
        runs[1].cancel()
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.gather(*runs, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], ValueError) and isinstance(results[2], ValueError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert calls == [[0, 2]]
    assert asyncio.run(worker.run(lambda: "still serving")) == "still serving"
