from voice.turns import Conversation, TurnMetrics


def test_history_trimmed_oldest_first_to_budget():
    conv = Conversation(lambda msgs: sum(len(m["content"]) for m in msgs), budget_tokens=20)
    conv.add("aaaaa", "bbbbb")
    conv.add("ccccc", "ddddd")
    msgs = conv.messages("eeeee")
    assert [m["content"] for m in msgs] == ["ccccc", "ddddd", "eeeee"]


def test_metrics_are_ms_after_speech_end():
    m = TurnMetrics(speech_end=10.0, endpoint=10.3, asr_final=10.1, first_span=10.4, first_audio=10.5)
    d = m.as_dict()
    assert d["turn_gap_ms"] == 500.0 and d["endpoint_ms"] == 300.0 and d["last_audio_ms"] is None
