"""The turn-taking state machine on scripted timelines: no models, no clock."""

from __future__ import annotations

import heapq
import itertools

import pytest
from hypothesis import given, strategies as st

from voice.turnevents import (
    ClientInterrupt,
    DropReply,
    Endpoint,
    Hypothesis,
    ReleaseReply,
    ReplyDone,
    Score,
    ScoreText,
    SpeechStarted,
    StartReply,
    StopReply,
    Transcribe,
    TypedText,
    Window,
)
from voice.turntaking import TurnSettings, TurnTaker, normalise, required_silence_ms

W = 0.032  # one VAD window


class Sim:
    """Runs a TurnTaker against fake ASR/LLM answers that arrive after fixed delays.

    `words`: (time, text) — what a decode whose audio ends at that time hears.
    `scores`: normalised text -> end-of-turn probability.
    """

    def __init__(self, words, scores, asr_s=0.25, score_s=0.05, looped=(), **settings):
        self.tt = TurnTaker(TurnSettings(**settings))
        self.words, self.scores, self.looped = words, scores, set(looped)  # looped: texts whose decode looped
        self.asr_s, self.score_s = asr_s, score_s
        self.log: list[tuple[float, object]] = []
        self._due: list = []
        self._n = itertools.count()

    def heard(self, audio_end_t):
        text = ""
        for t, words in self.words:
            if t <= audio_end_t:
                text = words
        return text

    def feed(self, inp, t):
        for action in self.tt.step(inp):
            self.log.append((t, action))
            if isinstance(action, Transcribe):
                text = self.heard(action.audio_end_t)
                self._later(t + self.asr_s, Hypothesis(action.utterance, text, action.audio_end_t, text in self.looped))
            elif isinstance(action, (ScoreText, StartReply)):
                self._later(t + self.score_s, Score(action.text, self.scores.get(normalise(action.text), 0.0)))

    def _later(self, t, inp):
        heapq.heappush(self._due, (t, next(self._n), inp))

    def run(self, probs, t0=0.0, echo=False):
        """Feed one window per probability; deliver answers as their time comes."""
        t = t0
        for i, p in enumerate(probs):
            t = t0 + i * W
            while self._due and self._due[0][0] <= t:
                due, _, inp = heapq.heappop(self._due)
                self.feed(inp, due)
            self.feed(Window(t, p, echo), t)
        return t + W

    def drain(self):
        """Deliver every answer still due, with no more windows (the client stopped sending)."""
        while self._due:
            due, _, inp = heapq.heappop(self._due)
            self.feed(inp, due)

    def of(self, kind):
        return [(t, a) for t, a in self.log if isinstance(a, kind)]


def speech(seconds):
    return [0.9] * round(seconds / W)


def quiet(seconds):
    return [0.02] * round(seconds / W)


QUESTION = "What is the capital of France?"
WORDS = [(0.4, "What"), (0.8, "What is the"), (1.2, "What is the capital of"), (1.6, "What is the capital of France?")]
SCORES = {normalise(QUESTION): 0.95, "what is the capital of": 0.01, "what is the": 0.01, "what": 0.02}


def test_required_silence_falls_linearly_with_the_score():
    assert required_silence_ms(None, 200, 1200, 0.05, 0.5) == 1200
    assert required_silence_ms(0.01, 200, 1200, 0.05, 0.5) == 1200
    assert required_silence_ms(0.9, 200, 1200, 0.05, 0.5) == 200
    assert required_silence_ms(0.05 * 10**0.5, 200, 1200, 0.05, 0.5) == pytest.approx(700)  # halfway in log p


@given(st.floats(0, 1), st.floats(0, 1))
def test_required_silence_never_rises_with_the_score(a, b):
    lo, hi = sorted((a, b))
    assert required_silence_ms(hi, 150, 1200, 0.05, 0.5) <= required_silence_ms(lo, 150, 1200, 0.05, 0.5)


def test_normalise_ignores_case_and_punctuation():
    assert normalise("What is the capital of France?") == normalise("what is the capital of  france")
    assert normalise("It's 3.") == "it's 3"


def test_complete_question_reply_is_prepared_before_and_released_at_a_short_endpoint():
    sim = Sim(WORDS, SCORES)
    sim.run(quiet(0.3) + speech(1.6) + quiet(1.5))
    speech_end = 0.3 + 1.6 - W
    ((t_end, end),) = sim.of(Endpoint)
    starts = sim.of(StartReply)
    assert starts and starts[-1][0] < t_end and not starts[-1][1].released  # prepared, held
    assert same(starts[-1][1].text, QUESTION)
    ((t_rel, rel),) = sim.of(ReleaseReply)
    assert rel.reply == starts[-1][1].reply and t_rel == t_end
    # the endpoint waits for the short silence and the final transcript, no longer
    t_final = [t for t, a in sim.of(Transcribe) if t > speech_end][-1]
    assert t_end - speech_end >= 0.2 and t_end < max(speech_end + 0.2, t_final + sim.asr_s) + W
    assert end.transcript == QUESTION
    assert not sim.of(StopReply)


def same(a, b):
    return normalise(a) == normalise(b)


def test_hesitation_at_an_unfinished_point_is_one_turn():
    words = [
        (0.4, "Can you tell"),
        (1.3, "Can you tell me the name of the..."),
        (2.4, "Can you tell me the name of the largest"),
        (2.9, "Can you tell me the name of the largest ocean?"),
    ]
    scores = {
        "can you tell": 0.01,
        "can you tell me the name of the": 0.003,
        "can you tell me the name of the largest": 0.02,
        "can you tell me the name of the largest ocean": 0.97,
    }
    sim = Sim(words, scores)
    sim.run(quiet(0.1) + speech(1.3) + quiet(0.9) + speech(0.8) + quiet(1.5))
    ((t_end, end),) = sim.of(Endpoint)
    assert t_end > 0.1 + 1.3 + 0.9 + 0.8 and "ocean" in end.transcript
    assert len(sim.of(ReleaseReply)) == 1 and len(sim.of(SpeechStarted)) == 1
    released = sim.of(ReleaseReply)[0][1].reply
    assert all(a.reply == released or not a.released for _, a in sim.of(StartReply))


@pytest.mark.parametrize("looped", [True, False])
def test_an_ending_whisper_invented_and_repeated_never_ends_the_turn_early(looped):
    # at the pause whisper heard "Who painted her? Who painted her?" (collapsed to one copy): it
    # scores complete, but the decode looped, so the turn waits the longest silence
    words = [(0.5, "Who painted"), (1.0, "Who painted her?"), (2.6, "Who painted the Mona Lisa?")]
    scores = {"who painted": 0.01, "who painted her": 0.9, "who painted the mona lisa": 0.95}
    sim = Sim(words, scores, looped={"Who painted her?"} if looped else set())
    sim.run(quiet(0.1) + speech(1.0) + quiet(0.8) + speech(0.7) + quiet(1.6))
    ends = [end.transcript for _, end in sim.of(Endpoint)]
    if looped:
        assert ends == ["Who painted the Mona Lisa?"] and len(sim.of(SpeechStarted)) == 1
    else:  # the same timeline without the loop flag splits: the rule is what keeps it whole
        assert ends[0] == "Who painted her?" and len(ends) == 2


def test_a_reply_on_words_that_changed_is_dropped_and_the_final_words_answered():
    words = [(0.8, "What is the capital?"), (1.6, "What is the capital of Spain?")]
    scores = {"what is the capital": 0.9, "what is the capital of spain": 0.95}
    sim = Sim(words, scores)
    sim.run(speech(1.6) + quiet(1.5))
    starts = [a for _, a in sim.of(StartReply)]
    assert [normalise(a.text) for a in starts][:1] == ["what is the capital"]
    dropped = {a.reply for _, a in sim.of(DropReply)}
    assert starts[0].reply in dropped
    ((_, rel),) = sim.of(ReleaseReply)
    assert rel.endpoint.transcript == "What is the capital of Spain?" and rel.reply == starts[-1].reply


def test_speech_resuming_drops_the_held_reply():
    words = [(0.8, "Tell me a joke."), (2.0, "Tell me a joke about cats.")]
    scores = {"tell me a joke": 0.9, "tell me a joke about cats": 0.9}
    sim = Sim(words, scores, min_silence_ms=800)
    sim.run(speech(1.0) + quiet(0.6) + speech(0.6) + quiet(2.0))
    drops = sim.of(DropReply)
    assert drops and drops[0][1].reason in ("speech resumed", "words changed")
    ((_, rel),) = sim.of(ReleaseReply)
    assert "cats" in rel.endpoint.transcript


def test_barge_in_stops_a_released_reply_in_the_window_that_starts_speech():
    sim = Sim(WORDS, SCORES)
    t = sim.run(speech(1.6) + quiet(1.0))
    ((_, rel),) = sim.of(ReleaseReply)
    sim.run(speech(0.5), t0=t)
    ((t_stop, stop),) = sim.of(StopReply)
    t_start = [t for t, a in sim.of(SpeechStarted)][-1]
    assert stop.reply == rel.reply and stop.reason == "barge_in" and t_stop == t_start


def test_noise_burst_or_cough_never_starts_a_reply():
    sim = Sim([(0.0, "")], {})
    sim.run(quiet(0.2) + [0.9, 0.9, 0.9] + quiet(1.0))  # a click: shorter than min_speech_ms
    assert not sim.of(SpeechStarted)
    sim.run(speech(0.35) + quiet(1.5), t0=2.0)  # a cough/door slam: whisper hears no words
    assert sim.of(SpeechStarted) and sim.of(Endpoint)
    assert sim.of(Endpoint)[0][1].transcript == ""
    assert not sim.of(StartReply) and not sim.of(ReleaseReply)


def test_echo_of_our_own_reply_is_not_a_barge_in():
    sim = Sim(WORDS, SCORES)
    t = sim.run(speech(1.6) + quiet(1.0))
    sim.run(speech(1.0) + quiet(0.5), t0=t, echo=True)
    assert not sim.of(StopReply) and len(sim.of(SpeechStarted)) == 1


def test_long_speech_is_cut_into_turns_and_nothing_is_lost():
    words = [(t / 10, f"word{t}") for t in range(1, 80)]
    sim = Sim(words, {}, max_utterance_s=3.0)
    sim.run(speech(7.0) + quiet(2.0))
    ends = sim.of(Endpoint)
    assert len(ends) >= 2 and len(sim.of(SpeechStarted)) == len(ends)
    assert 2.9 <= ends[0][0] <= 3.4 + 0.25  # at the limit, plus one decode


def test_typed_turn_stops_the_playing_reply_and_starts_a_released_one():
    sim = Sim(WORDS, SCORES)
    t = sim.run(speech(1.6) + quiet(1.0))
    ((_, rel),) = sim.of(ReleaseReply)
    sim.feed(TypedText("hello", t), t)
    stop = sim.of(StopReply)[-1][1]
    start = sim.of(StartReply)[-1][1]
    assert stop.reply == rel.reply and start.text == "hello" and start.released
    sim.feed(ClientInterrupt(t + 0.1), t + 0.1)
    assert sim.of(StopReply)[-1][1].reply == start.reply


def test_reply_finishing_before_or_after_the_endpoint():
    sim = Sim([(0.9, QUESTION)], SCORES)  # the whole question is heard before its last syllable ends
    sim.run(speech(1.6) + quiet(0.05))
    ((_, start),) = sim.of(StartReply)
    sim.feed(ReplyDone(start.reply), 1.7)  # all output made while still held
    t = sim.run(quiet(1.0), t0=1.7)
    ((_, rel),) = sim.of(ReleaseReply)
    assert rel.reply == start.reply  # still released: its held output goes out now
    sim.feed(ReplyDone(rel.reply), t)
    assert sim.tt.reply is None
    sim.run(speech(0.5), t0=t + 1)
    assert not sim.of(StopReply)  # nothing left to stop


def test_without_prediction_nothing_is_prepared_before_the_endpoint():
    sim = Sim(WORDS, SCORES, predictive=False)
    sim.run(speech(1.6) + quiet(1.0))
    ((t_end, _),) = sim.of(Endpoint)
    ((t_start, start),) = sim.of(StartReply)
    assert t_start == t_end
    assert sim.of(ReleaseReply)[0][1].reply == start.reply
    assert sim.of(ScoreText)  # the endpoint still reads the words' score


def test_audio_a_decode_already_covered_is_not_decoded_again():
    sim = Sim(WORDS, SCORES, interval_ms=100)
    sim.run(speech(1.6) + quiet(1.5))
    t_end = sim.of(Endpoint)[0][0]
    # after speech ends, at most one decode reaches past the tail: nothing new came after it
    last_voiced = round(1.6 / W) * W - W
    assert len([t for t, _ in sim.of(Transcribe) if last_voiced + 0.064 <= t < t_end]) <= 1


def test_unknown_input_is_a_type_error():
    with pytest.raises(TypeError):
        TurnTaker().step("speech")


def test_a_turn_ends_when_its_final_words_arrive_after_the_audio_stopped():
    sim = Sim(WORDS, SCORES, asr_s=0.6)
    sim.run(speech(1.6) + quiet(0.3))  # the client sends a little silence, then nothing
    assert not sim.of(Endpoint)
    sim.drain()
    ((_, end),) = sim.of(Endpoint)
    assert end.transcript == QUESTION and sim.of(ReleaseReply)


def test_words_repeated_at_the_first_quiet_window_are_final_without_waiting_for_the_tail():
    sim = Sim([(0.9, QUESTION)], SCORES, asr_s=0.3, interval_ms=1000)  # one partial, at 1.0 s
    sim.run(speech(1.6) + quiet(1.0))
    last_voiced = round(1.6 / W) * W - W
    after = [t for t, _ in sim.of(Transcribe) if t > last_voiced]
    ((t_end, end),) = sim.of(Endpoint)
    assert len(after) == 1 and after[0] == pytest.approx(last_voiced + W)
    assert end.transcript == QUESTION and t_end <= last_voiced + W + 0.3 + W + 1e-9


def test_new_words_at_the_first_quiet_window_wait_for_a_decode_with_the_tail():
    words = [(0.9, "What is the capital of"), (1.5, QUESTION)]
    sim = Sim(words, SCORES, asr_s=0.3, final_tail_ms=64, interval_ms=1000)
    sim.run(speech(1.6) + quiet(1.5))
    last_voiced = round(1.6 / W) * W - W
    after = [t for t, _ in sim.of(Transcribe) if t > last_voiced]
    assert len(after) == 2 and after[1] >= last_voiced + 0.064
    assert sim.of(Endpoint)[0][1].transcript == QUESTION


def test_partial_decodes_leave_a_slow_cpu_free():
    fast, slow = Sim(WORDS, SCORES, asr_s=0.05, partial_load=0.5), Sim(WORDS, SCORES, asr_s=0.4, partial_load=0.5)
    for sim in (fast, slow):
        sim.run(speech(3.0))
    busy = [len(sim.of(Transcribe)) * sim.asr_s / 3.0 for sim in (fast, slow)]
    assert len(fast.of(Transcribe)) >= 10 and busy[1] <= 0.5 + 0.15  # asr.partial_load


def test_words_scored_unfinished_while_the_user_speaks_get_no_reply():
    words = [(0.3, "Can you tell"), (0.6, "Can you tell me the name of the...")]
    sim = Sim(words, {"can you tell": 0.001, "can you tell me the name of the": 0.001}, interval_ms=100)
    sim.run(speech(1.2))
    assert len(sim.of(ScoreText)) >= 2 and not sim.of(StartReply)


def test_final_words_that_score_unfinished_get_a_held_reply_released_at_the_longest_silence():
    words = [(1.0, "Can you tell me the name of the...")]
    sim = Sim(words, {"can you tell me the name of the": 0.001}, max_silence_ms=1200)
    sim.run(speech(1.2) + quiet(0.6))
    (held,) = [a for _, a in sim.of(StartReply) if not a.released][-1:]
    assert not sim.of(Endpoint) and all(a.reply != held.reply for _, a in sim.of(DropReply))
    sim.run(quiet(1.0), t0=1.8)
    ((_, end),) = sim.of(Endpoint)
    assert end.transcript == "Can you tell me the name of the..."
    assert [a.reply for _, a in sim.of(ReleaseReply)] == [held.reply]  # the prepared reply, not a new one


def test_a_held_reply_on_unfinished_final_words_is_dropped_when_the_user_goes_on():
    words = [(1.0, "Can you tell me the name of the..."), (2.2, "Can you tell me the name of the largest ocean?")]
    scores = {"can you tell me the name of the": 0.001, "can you tell me the name of the largest ocean": 0.97}
    sim = Sim(words, scores)
    sim.run(speech(1.2) + quiet(0.6) + speech(0.8) + quiet(1.0))
    first = [a for t, a in sim.of(StartReply) if 1.2 <= t < 1.8]
    assert first and any(d.reply == first[-1].reply for _, d in sim.of(DropReply))
    ((_, end),) = sim.of(Endpoint)
    assert "ocean" in end.transcript and len(sim.of(ReleaseReply)) == 1


def test_decodes_while_the_user_speaks_are_partials_and_decodes_in_the_pause_are_marked_quiet():
    sim = Sim(WORDS, SCORES)
    sim.run(speech(1.6) + quiet(1.5))
    decodes = sim.of(Transcribe)
    talking = [a for t, a in decodes if t < 1.6]
    pausing = [a for t, a in decodes if t >= 1.6]
    assert talking and not any(a.quiet for a in talking)
    assert pausing and all(a.quiet for a in pausing)  # these go first on a shared ASR worker
