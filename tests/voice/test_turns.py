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


def test_a_continuation_extends_the_last_answer_and_keeps_the_history_whole():
    conv = Conversation(lambda msgs: sum(len(m["content"]) for m in msgs), budget_tokens=40)
    conv.add("old question", "old answer")
    conv.add("Why is the sky blue?", "Light scatters.", shortened=True)
    assert conv.shortened
    msgs = conv.continuation()
    assert msgs[-1] == {"role": "assistant", "content": "Light scatters."} and len(msgs) == 2  # oldest trimmed
    conv.extend_last(" Blue the most.")
    assert conv.turns[-1] == ("Why is the sky blue?", "Light scatters. Blue the most.") and not conv.shortened


def test_turn_metrics_report_the_reply_policy():
    m = TurnMetrics(
        reply_end="cap", shortened=True, reply_tokens=30, reply_sentences=2, reply_audio_s=9.5, dropped="and then the"
    )
    d = m.as_dict()
    assert (
        d["reply_end"],
        d["shortened"],
        d["reply_tokens"],
        d["reply_sentences"],
        d["reply_audio_s"],
        d["dropped_words"],
    ) == ("cap", True, 30, 2, 9.5, 3)
