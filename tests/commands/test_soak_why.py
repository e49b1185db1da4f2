"""`voice soak` says why a level was slow: where each turn's gap went, who waited, the queues."""

from __future__ import annotations

from commands.soak import queue_summary, turn_waits, why_slow


def turn(client: int, endpoint: float, first_span: float, first_audio: float) -> dict:
    return {"client": client, "endpoint": endpoint, "first_span": first_span, "first_audio": first_audio,
            "turn_gap": first_audio}  # fmt: skip


def test_a_turns_waits_add_up_to_its_gap_and_a_prepared_reply_spends_nothing_in_the_llm():
    late = turn_waits(turn(0, 400.0, 650.0, 900.0))
    assert late == {"endpoint": 400.0, "llm": 250.0, "tts": 250.0}
    prepared = turn_waits(turn(0, 400.0, 120.0, 430.0))  # its text came before the endpoint
    assert prepared == {"endpoint": 400.0, "llm": 0.0, "tts": 30.0}
    for waits, gap in ((late, 900.0), (prepared, 430.0)):
        assert sum(waits.values()) == gap


def test_why_slow_names_the_stage_each_turn_waited_in_and_the_talker_who_waited_most():
    turns = [
        turn(0, 100.0, 150.0, 500.0),  # tts
        turn(1, 900.0, 950.0, 1100.0),  # endpoint
        turn(1, 400.0, 2400.0, 2600.0),  # llm: the worst turn
        turn(2, 300.0, 700.0, 800.0),  # llm
    ]
    why = why_slow(turns)
    assert why["waited_longest"] == {"endpoint": 1, "llm": 2, "tts": 1}
    assert why["worst_gap_by_client"] == {"0": 500.0, "1": 2600.0, "2": 800.0}
    assert why["worst_turn"] == {"client": 1, "turn_gap": 2600.0, "endpoint": 400.0, "llm": 2000.0, "tts": 200.0}
    assert why_slow([]) == {"waited_longest": {}, "worst_gap_by_client": {}, "worst_turn": None}


def test_queue_summary_keeps_the_samples_and_each_queues_mean_and_max():
    samples = [
        {"t": 0.0, "queues": {"asr": 0, "tts": 1, "reply": 2}},
        {"t": 0.5, "queues": {"asr": 3, "tts": 0, "reply": 4}},
    ]
    out = queue_summary(samples)
    assert out["asr"] == {"mean": 1.5, "max": 3} and out["reply"] == {"mean": 3.0, "max": 4}
    assert out["samples"][1] == {"t": 0.5, "asr": 3, "tts": 0, "reply": 4}
