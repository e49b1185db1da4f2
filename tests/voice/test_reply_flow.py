"""The reply state machine on scripted timelines: every path a reply can take."""

import pytest

from voice.reply_flow import (
    AudioMade,
    Cancel,
    Drop,
    EndDecode,
    Finish,
    FirstPhrase,
    Forwarded,
    OpenGate,
    OutputMade,
    PolicyDone,
    Prediction,
    Release,
    ReplyFlow,
    Stage,
    Stop,
)


def run(flow: ReplyFlow, *events) -> list:
    """Every action the events call for, in order."""
    return [a for e in events for a in flow.step(e)]


def test_a_prepared_reply_holds_after_its_first_phrase_and_is_released_with_its_audio_ready():
    flow = ReplyFlow(created_t=0.0)
    assert flow.urgent and not flow.held and flow.may_hold  # the span ending its first phrase holds it
    assert run(flow, FirstPhrase(0.10)) == []
    assert flow.stage is Stage.HELD and flow.held and not flow.urgent  # decoding waits for the endpoint
    assert not flow.may_hold
    run(flow, AudioMade(0.20), AudioMade(0.25))
    assert flow.audio_made_t == 0.20  # the first chunk counts
    assert run(flow, Release(0.30)) == [OpenGate(Prediction.RELEASED)]
    assert flow.stage is Stage.RELEASED and not flow.held  # decoding goes on
    assert run(flow, OutputMade(), Forwarded()) == [Finish()]
    assert flow.stage is Stage.DONE


def test_a_prediction_whose_audio_is_not_ready_at_the_endpoint_is_late():
    flow = ReplyFlow(created_t=0.0)
    run(flow, FirstPhrase(0.10))
    assert run(flow, Release(0.30)) == [OpenGate(Prediction.LATE)]
    run(flow, AudioMade(0.45))  # made after the endpoint
    assert flow.prediction is Prediction.LATE


def test_a_reply_released_before_its_first_phrase_stays_urgent():
    flow = ReplyFlow(created_t=0.0)
    assert run(flow, Release(0.05)) == [OpenGate(Prediction.LATE)]
    assert flow.urgent and not flow.held and not flow.may_hold  # its spans go out as they come
    run(flow, FirstPhrase(0.2))
    assert flow.stage is Stage.RELEASED and not flow.urgent and not flow.held


@pytest.mark.parametrize("dropped, expected", [("words changed", Prediction.DROPPED), ("", Prediction.NONE)])
def test_a_reply_started_at_the_endpoint_says_whether_a_prediction_was_dropped(dropped, expected):
    flow = ReplyFlow(created_t=1.0)
    assert run(flow, Release(1.0, dropped)) == [OpenGate(expected)]


def test_dropping_a_held_reply_cancels_it_unheard_and_later_inputs_do_nothing():
    flow = ReplyFlow(created_t=0.0)
    run(flow, FirstPhrase(0.1), AudioMade(0.2))
    assert run(flow, Drop("words changed")) == [Cancel("words changed", heard=False)]
    assert flow.stage is Stage.DROPPED and not flow.urgent and not flow.held and not flow.live
    assert run(flow, Release(0.3), Drop("again"), Stop("barge_in"), PolicyDone(), Forwarded()) == []


def test_a_drop_never_ends_a_released_reply():
    flow = ReplyFlow(created_t=0.0)
    run(flow, FirstPhrase(0.1), Release(0.2))
    assert run(flow, Drop("words changed")) == []
    assert flow.stage is Stage.RELEASED


def test_a_barge_in_stops_a_released_reply_heard_and_a_held_one_unheard():
    heard = ReplyFlow(created_t=0.0)
    run(heard, FirstPhrase(0.1), Release(0.2))
    assert run(heard, Stop("barge_in")) == [Cancel("barge_in", heard=True)]
    assert heard.stage is Stage.STOPPED
    held = ReplyFlow(created_t=0.0)
    run(held, FirstPhrase(0.1))
    assert run(held, Stop("barge_in")) == [Cancel("barge_in", heard=False)]
    assert held.stage is Stage.DROPPED


def test_the_reply_policy_ends_decoding_once_and_output_goes_on():
    flow = ReplyFlow(created_t=0.0)
    run(flow, FirstPhrase(0.1), Release(0.2))
    assert run(flow, PolicyDone()) == [EndDecode()]
    assert run(flow, PolicyDone()) == []
    assert not flow.decoding and flow.stage is Stage.RELEASED
    assert run(flow, OutputMade(), Forwarded()) == [Finish()]


def test_a_reply_done_before_the_endpoint_finishes_only_after_release_and_forwarding():
    flow = ReplyFlow(created_t=0.0)
    run(flow, FirstPhrase(0.1), AudioMade(0.15), PolicyDone(), OutputMade())
    assert flow.stage is Stage.HELD and not flow.held  # nothing left to decode: not waiting on the scheduler
    assert run(flow, Forwarded()) == []  # nothing reached the user before the release
    assert run(flow, Release(0.3)) == [OpenGate(Prediction.RELEASED)]
    assert run(flow, Forwarded()) == [Finish()]


def test_a_reply_done_after_the_endpoint_finishes_when_forwarded():
    flow = ReplyFlow(created_t=0.0)
    run(flow, Release(0.1), FirstPhrase(0.3), AudioMade(0.4))
    assert run(flow, OutputMade()) == []
    assert run(flow, Forwarded()) == [Finish()]
    assert run(flow, Stop("barge_in")) == []  # over: nothing to stop


def test_unknown_inputs_are_refused():
    with pytest.raises(TypeError, match="cannot take"):
        ReplyFlow(0.0).step("release")
