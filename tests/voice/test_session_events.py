from voice.session_events import ReplyText, Speech, TurnFailed, VadState, dispatch


def test_dispatch_calls_the_handler_of_the_events_type_only():
    seen = []
    handlers = {
        VadState: lambda e: seen.append(("vad", e.state)) or "vad",
        ReplyText: lambda e: seen.append(("reply", e.text)) or "reply",
    }
    assert dispatch(VadState(Speech.START, 1.0), handlers) == "vad"
    assert dispatch(ReplyText("Paris.", 2.0), handlers) == "reply"
    assert dispatch(TurnFailed("asr_failed", "boom"), handlers) is None  # no handler: nothing runs
    assert seen == [("vad", Speech.START), ("reply", "Paris.")]


def test_log_line_is_key_value_with_quoted_text():
    from voice.session_events import log_line

    line = log_line(
        "reply_dropped", session="s1", turn=2, reason="words changed", gap_ms=812.44, interrupted=False, skipped=None
    )
    assert line == 'event=reply_dropped session=s1 turn=2 reason="words changed" gap_ms=812.4 interrupted=false'
    assert log_line("x", text='say "hi"') == 'event=x text="say \\"hi\\""'
