"""web/protocol.py's one vocabulary: what `encode` sends is what web/PROTOCOL.md says, and a
client's `Decoder` reads it back as the event the server encoded (no server, no models)."""

import json

import numpy as np
import pytest

from voice.session_events import AudioOut, AudioStart, ReplyText, Speech, Transcript, TurnEnd, TurnFailed, VadState
from voice.tts import AudioChunk
from voice.turns import TurnMetrics
from web.protocol import Decoder, ErrorReport, ProtocolError, Ready, ReportedMetrics, encode, ends_turn

METRICS = TurnMetrics(
    speech_end=10.0,
    endpoint=10.3,
    asr_final=10.2,
    first_span=10.4,
    first_audio=10.5,
    tokens=7,
    acceptance=0.5,
    transcript="What is the capital of France?",
    reply="Paris.",
)


@pytest.mark.parametrize(
    "event, wire",
    [
        (
            Ready("s1", 22050, {"llm": "x"}),
            {"type": "ready", "session": "s1", "output_sample_rate": 22050, "config": {"llm": "x"}},
        ),
        (VadState(Speech.START, 1.0), {"type": "vad", "state": "speech_start"}),
        (VadState(Speech.ENDPOINT, 1.0), {"type": "vad", "state": "endpoint"}),
        (Transcript("what is", False, 1.0), {"type": "transcript", "final": False, "text": "what is"}),
        (ReplyText("Paris.", 1.0), {"type": "reply", "text": "Paris."}),
        (AudioStart(22050, 1.0), {"type": "audio_start", "sample_rate": 22050}),
        (TurnFailed("turn_failed", "boom"), {"type": "error", "code": "turn_failed", "message": "boom"}),
        (ErrorReport("bad_frame", "odd"), {"type": "error", "code": "bad_frame", "message": "odd"}),
    ],
)
def test_each_event_is_the_documented_message_and_decodes_back(event, wire):
    message = encode(event)
    assert json.loads(message) == wire
    decoded = Decoder().decode(message)
    assert type(decoded) is type(event)
    assert {k: v for k, v in vars(decoded).items() if k != "t"} == {k: v for k, v in vars(event).items() if k != "t"}


def test_a_turn_end_carries_the_metrics_a_client_reads_as_in_process():
    message = encode(TurnEnd(METRICS))
    assert json.loads(message)["metrics"]["turn_gap_ms"] == 500.0
    decoded = Decoder().decode(message)
    assert isinstance(decoded, TurnEnd) and isinstance(decoded.metrics, ReportedMetrics)
    assert decoded.metrics.as_dict() == METRICS.as_dict()
    assert (decoded.metrics.transcript, decoded.metrics.reply) == (METRICS.transcript, METRICS.reply)


def test_reply_audio_decodes_at_the_rate_of_its_audio_start():
    samples = np.arange(-5, 5, dtype=np.int16)
    decoder = Decoder()
    decoder.decode(encode(AudioStart(16000, 1.0)))
    audio = decoder.decode(encode(AudioOut(AudioChunk(samples, 16000, 1.0))))
    assert isinstance(audio, AudioOut) and audio.chunk.rate_hz == 16000
    assert audio.chunk.samples.tolist() == samples.tolist()


def test_only_a_turns_own_failure_decodes_as_a_failed_turn():
    assert isinstance(Decoder().decode(encode(ErrorReport("asr_failed", "x"))), TurnFailed)
    assert isinstance(Decoder().decode(encode(ErrorReport("idle_timeout", "x"))), ErrorReport)


def test_an_unknown_type_is_skipped_and_a_malformed_message_is_a_protocol_error():
    assert Decoder().decode(json.dumps({"type": "newer_feature", "x": 1})) is None
    with pytest.raises(ProtocolError, match="transcript"):
        Decoder().decode(json.dumps({"type": "transcript", "final": True}))
    with pytest.raises(ProtocolError):
        Decoder().decode("not json")


def test_a_turn_ends_at_its_turn_end_its_failure_or_a_final_transcript_without_words():
    assert ends_turn(TurnEnd(METRICS)) and ends_turn(TurnFailed("turn_failed", "x"))
    assert ends_turn(Transcript("", True, 1.0))
    assert not ends_turn(Transcript("Paris?", True, 1.0)) and not ends_turn(Transcript("", False, 1.0))
    assert not ends_turn(VadState(Speech.ENDPOINT, 1.0)) and not ends_turn(ErrorReport("bad_frame", "x"))
