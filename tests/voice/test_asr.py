import logging
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice.asr import (LOOP_MAX_PERIOD_WORDS, MAX_FRAMES, DecodeAttempt, LocalAgreement, LoopRetry,
                       WindowDecoder, collapse_repetition, compression_ratio, decode_plan,
                       find_repetitions, is_repetition_loop, transcribe_until_clean)

# What greedy whisper-base returned on piper fragments with a 600-frame window.
WHISPER_LOOPS = [
    "Mount Everest Mount Everest Mount Everest Mount Everest Mount Everest Mount Everest Mount",
    "Octopuses Octapuses Octapuses Octapuses Octapuses",
    "blue sky blue sky blue sky blue sky blue sky blue sky blue sky",
    "Dinner tonight. Dinner tonight. Dinner tonight. Dinner tonight. Dinner tonight.",
    "Chokilou. Chokilou. Chokilou.",
    "Octopus Octopus Octopus Octopus Octopus Octopus Octopus Oct",
    "Farge a Stocean Farge a Stocean Farge a St",  # the token cap cut "Stocean"
    "Italy Italy Italy Italy Italy Italy Italy Italy Italy Italy Italy Italy Italy",
    "Learn to swim! Learn to swim! Learn to",
]
SPEECH = [
    "What is the capital of France?",
    "Can you tell me the name of the largest ocean?",
    "How far away is the moon?",
    "Tell me a fun fact about octopuses.",
    "How many days are there in a leap year?",
    "Yes yes.",  # two copies: said that way as often as whisper doubles a word
    "Thank you. Thank you.",
    "Mount Everest",
    "What is the tallest mountain in the world? The tallest one.",
    "",
]

words_st = st.lists(st.sampled_from(["the", "ocean", "Italy", "swim!", "to", "Learn", "a", "blue,"]),
                    max_size=30)
phrase_st = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=LOOP_MAX_PERIOD_WORDS)
prefix_st = st.lists(st.text("xyz", min_size=1, max_size=4), max_size=6)


def _keys(words):
    return ["".join(c for c in w.lower() if c.isalnum()) for w in words]


def _is_subsequence(small, big):
    it = iter(big)
    return all(any(b == s for b in it) for s in small)


def test_local_agreement_commits_words_two_hypotheses_agree_on():
    la = LocalAgreement()
    assert la.update("what is") == []
    assert la.update("what is the cap") == ["what", "is"]
    assert la.update("what is the capital of") == ["the"]
    assert la.update("What is the capital of France?") == ["capital", "of"]
    assert la.text() == "what is the capital of"


def test_local_agreement_never_retracts_and_ignores_case_punctuation():
    la = LocalAgreement()
    la.update("Hello, world")
    assert la.update("hello world again") == ["hello", "world"]
    assert la.update("yellow word again") == []  # disagreement with committed words commits nothing
    assert la.text() == "hello world"


def test_compression_ratio_is_faster_whispers():
    from faster_whisper.transcribe import get_compression_ratio

    for text in WHISPER_LOOPS + SPEECH[:-1] + ["ha" * 40]:
        assert compression_ratio(text) == pytest.approx(get_compression_ratio(text))
    assert compression_ratio("Italy Italy Italy Italy") < 2.4  # why the word rule is needed


@pytest.mark.parametrize("text", WHISPER_LOOPS)
def test_whisper_loops_are_flagged(text):
    assert is_repetition_loop(text)


@pytest.mark.parametrize("text", SPEECH)
def test_speech_is_not_flagged(text):
    assert not is_repetition_loop(text)


def test_three_in_a_row_is_a_loop_even_when_said():
    # Documented choice: retried, and if it persists collapsed, which keeps the meaning.
    assert is_repetition_loop("No, no, no.")
    assert collapse_repetition("very very very good") == "very good"


def test_long_character_loop_is_caught_by_compression_ratio():
    assert find_repetitions(["ha" * 40]) == []
    assert is_repetition_loop("ha" * 40)


@given(prefix_st, phrase_st, st.integers(3, 8))
def test_a_phrase_repeated_three_times_or_more_is_flagged(prefix, phrase, repeats):
    assert is_repetition_loop(" ".join(prefix + phrase * repeats))


@given(prefix_st, phrase_st.filter(lambda p: len(p) > 1), st.data())
def test_a_loop_cut_off_mid_phrase_is_flagged(prefix, phrase, data):
    cut = data.draw(st.integers(1, len(phrase) - 1))
    assert is_repetition_loop(" ".join(prefix + phrase * 2 + phrase[:cut]))


@pytest.mark.parametrize("text, collapsed", [
    ("Italy Italy Italy Italy", "Italy"),
    ("Italy, Italy, Italy, Italy,", "Italy"),
    ("Learn to swim! Learn to swim! Learn to", "Learn to swim!"),
    (WHISPER_LOOPS[0], "Mount Everest"),
    ("What is the largest ocean? Ocean? Ocean? Ocean?", "What is the largest ocean?"),
    ("ocean? the ocean? the ocean? the ocean?", "the ocean?"),  # the copy that ends a sentence
    ("Farge a Stocean Farge a Stocean Farge a St", "Farge a Stocean"),
    ("What is the capital of France?", "What is the capital of France?"),
])
def test_collapse_keeps_one_copy(text, collapsed):
    assert collapse_repetition(text) == collapsed


@given(words_st)
def test_collapse_only_deletes_words_and_leaves_no_loop(words):
    text = " ".join(words)
    out = collapse_repetition(text).split()
    assert len(out) <= len(words)
    assert _is_subsequence(_keys(out), _keys(words))
    assert find_repetitions(out) == []


@given(words_st)
def test_collapse_leaves_text_without_a_loop_unchanged(words):
    text = " ".join(words)
    if not find_repetitions(words):
        assert collapse_repetition(text) == text


@given(phrase_st, st.integers(3, 8))
def test_collapse_of_a_repeated_phrase_is_no_longer_than_the_phrase(phrase, repeats):
    assert len(collapse_repetition(" ".join(phrase * repeats)).split()) <= len(phrase)


def test_decode_plan_widens_the_window_then_samples_on_the_widest():
    plan = decode_plan(600, LoopRetry(windows_frames=(3000, 1500), temperatures=(0.2, 0.4)))
    assert plan == [DecodeAttempt(600, 0.0), DecodeAttempt(1500, 0.0), DecodeAttempt(3000, 0.0),
                    DecodeAttempt(3000, 0.2), DecodeAttempt(3000, 0.4)]
    assert decode_plan(2000, LoopRetry((1500, 3000), (0.2,))) == [
        DecodeAttempt(2000, 0.0), DecodeAttempt(3000, 0.0), DecodeAttempt(3000, 0.2)]
    assert decode_plan(MAX_FRAMES, LoopRetry((1500, 3000), ())) == [DecodeAttempt(MAX_FRAMES, 0.0)]


class ScriptedDecode:
    """A fake decoder: returns scripted texts in order and records the attempts it was given."""

    def __init__(self, *texts):
        self.texts, self.attempts = list(texts), []

    def __call__(self, attempt):
        self.attempts.append(attempt)
        return self.texts[len(self.attempts) - 1]


PLAN = decode_plan(600, LoopRetry((1500, 3000), (0.2, 0.4, 0.6)))


def test_a_clean_first_decode_is_the_only_decode():
    decode = ScriptedDecode("What is the capital of France?")
    result = transcribe_until_clean(decode, PLAN)
    assert (result.text, result.attempts, result.collapsed) == ("What is the capital of France?", 1, False)
    assert decode.attempts == [DecodeAttempt(600, 0.0)]


def test_a_loop_is_retried_with_a_longer_window(caplog):
    decode = ScriptedDecode("Mount Everest Mount Everest Mount Everest Mount", "Mount Everest")
    with caplog.at_level(logging.INFO, logger="voice.asr"):
        result = transcribe_until_clean(decode, PLAN)
    assert (result.text, result.attempts) == ("Mount Everest", 2)
    assert decode.attempts == [DecodeAttempt(600, 0.0), DecodeAttempt(1500, 0.0)]
    assert "retrying" in caplog.text


def test_a_retry_that_hears_nothing_does_not_end_the_retries():
    decode = ScriptedDecode("Italy Italy Italy Italy", "", "Italy.")
    assert transcribe_until_clean(decode, PLAN).text == "Italy."


def test_when_every_attempt_loops_the_first_is_collapsed(caplog):
    decode = ScriptedDecode(*(["Italy Italy Italy Italy"] + ["Learn to swim! Learn to swim! Learn to"] * 10))
    with caplog.at_level(logging.INFO, logger="voice.asr"):
        result = transcribe_until_clean(decode, PLAN)
    assert (result.text, result.attempts, result.collapsed) == ("Italy", len(PLAN), True)
    assert len(result.texts) == len(PLAN)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_a_loop_collapse_cannot_mend_becomes_silence():
    result = transcribe_until_clean(ScriptedDecode(*["ha" * 40] * len(PLAN)), PLAN)
    assert result.text == "" and result.collapsed


class FakeWhisper:
    """Stands in for ctranslate2.models.Whisper: records encodes and generate arguments."""

    def __init__(self, *outputs):
        self.outputs, self.encoded_frames, self.generate_kwargs = list(outputs), [], []

    def encode(self, features, to_cpu=False):
        self.encoded_frames.append(features.shape[-1])
        return f"encoded {features.shape[-1]}"

    def generate(self, encoded, prompts, **kwargs):
        self.generate_kwargs.append({"encoded": encoded, **kwargs})
        return [SimpleNamespace(sequences_ids=[self.outputs.pop(0)])]


def test_window_decoder_encodes_each_window_once_and_samples_with_full_top_k():
    model = FakeWhisper([1], [2], [3], [4])
    decoder = WindowDecoder(model, [50258], np.zeros((80, 150), np.float32), max_length=40)
    for attempt in [DecodeAttempt(600, 0.0), DecodeAttempt(3000, 0.0), DecodeAttempt(3000, 0.2),
                    DecodeAttempt(3000, 0.4)]:
        decoder(attempt)
    assert model.encoded_frames == [600, 3000]
    greedy, wide, hot, hotter = model.generate_kwargs
    assert greedy["encoded"] == "encoded 600" and greedy["beam_size"] == 1 and "sampling_topk" not in greedy
    assert hot["encoded"] == "encoded 3000" and hot["sampling_topk"] == 0
    assert (hot["sampling_temperature"], hotter["sampling_temperature"]) == (0.2, 0.4)
    assert all(k["max_length"] == 40 for k in model.generate_kwargs)


def test_a_looping_generate_is_retried_and_the_clean_text_returned():
    # token ids stand for words here: 7 = "Italy", 8 = "."
    model = FakeWhisper([7] * 12, [7, 8])
    vocab = {7: " Italy", 8: "."}
    decoder = WindowDecoder(model, [50258], np.zeros((80, 60), np.float32), max_length=20)
    result = transcribe_until_clean(lambda a: "".join(vocab[t] for t in decoder(a)).strip(), PLAN)
    assert (result.text, result.attempts) == ("Italy.", 2)
    assert model.encoded_frames == [600, 1500]


@pytest.mark.slow
def test_short_window_transcript_matches_the_words(stack, question_wav):
    from audio.wavio import read_wav

    text = stack.asr.transcribe(read_wav(question_wav)).lower()
    assert "capital of france" in text
    assert stack.asr.last_transcription.attempts == 1


@pytest.mark.slow
@pytest.mark.parametrize("fragment, lead_s", [("Mount Everest?", 0.0), ("largest ocean?", 0.6),
                                              ("the Pacific?", 0.3), ("to swim?", 0.3)])
def test_short_fragments_never_come_back_as_a_loop(stack, fragment, lead_s):
    from audio.wavio import pcm16_to_float, resample

    speech = resample(pcm16_to_float(stack.tts.synthesize_all(fragment, deterministic=True)),
                      stack.tts.rate_hz, 16000)
    audio = np.concatenate([np.zeros(int(lead_s * 16000), np.float32), speech])
    result = stack.asr.transcribe_detailed(audio)
    assert result.text and not is_repetition_loop(result.text)
    if fragment == "Mount Everest?":  # greedy whisper-base loops on this one at 600 frames
        assert "everest" in result.text.lower()
