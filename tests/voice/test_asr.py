import logging
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, strategies as st

from voice.asr import (
    MAX_FRAMES,
    SAMPLE_RATE_HZ,
    DecodeAttempt,
    Decoded,
    LoopRetry,
    NoSpeechRule,
    WindowDecoder,
    average_logprob,
    decode_plan,
    transcribe_until_clean,
)
from voice.config import ASRConfig
from voice.repetition import (
    LOOP_MAX_PERIOD_WORDS,
    collapse_repetition,
    compression_ratio,
    find_repetitions,
    is_repetition_loop,
)

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
    "Who painted her? Who painted her?",  # a short window invented an ending, then repeated it
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

words_st = st.lists(st.sampled_from(["the", "ocean", "Italy", "swim!", "to", "Learn", "a", "blue,"]), max_size=30)
phrase_st = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=LOOP_MAX_PERIOD_WORDS)
prefix_st = st.lists(st.text("xyz", min_size=1, max_size=4), max_size=6)


def _keys(words):
    return ["".join(c for c in w.lower() if c.isalnum()) for w in words]


def _is_subsequence(small, big):
    it = iter(big)
    return all(any(b == s for b in it) for s in small)


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


def test_a_whole_sentence_said_twice_is_a_loop_and_collapses_to_one():
    assert collapse_repetition("Who painted her? Who painted her?") == "Who painted her?"
    assert collapse_repetition("So. The cat sat. The cat sat. Really") == "So. The cat sat. Really"
    # shorter sentences, or a repeat that is not a whole sentence, are speech
    assert not is_repetition_loop("Thank you. Thank you.")
    assert not is_repetition_loop("I said what is it. What is it.")


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


@pytest.mark.parametrize(
    "text, collapsed",
    [
        ("Italy Italy Italy Italy", "Italy"),
        ("Italy, Italy, Italy, Italy,", "Italy"),
        ("Learn to swim! Learn to swim! Learn to", "Learn to swim!"),
        (WHISPER_LOOPS[0], "Mount Everest"),
        ("What is the largest ocean? Ocean? Ocean? Ocean?", "What is the largest ocean?"),
        ("ocean? the ocean? the ocean? the ocean?", "the ocean?"),  # the copy that ends a sentence
        ("Farge a Stocean Farge a Stocean Farge a St", "Farge a Stocean"),
        ("What is the capital of France?", "What is the capital of France?"),
    ],
)
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
    assert plan == [
        DecodeAttempt(600, 0.0),
        DecodeAttempt(1500, 0.0),
        DecodeAttempt(3000, 0.0),
        DecodeAttempt(3000, 0.2),
        DecodeAttempt(3000, 0.4),
    ]
    assert decode_plan(2000, LoopRetry((1500, 3000), (0.2,))) == [
        DecodeAttempt(2000, 0.0),
        DecodeAttempt(3000, 0.0),
        DecodeAttempt(3000, 0.2),
    ]
    assert decode_plan(MAX_FRAMES, LoopRetry((1500, 3000), ())) == [DecodeAttempt(MAX_FRAMES, 0.0)]


class ScriptedDecode:
    """A fake decoder: returns scripted decodes in order (a plain string is confident speech)
    and records the attempts it was given."""

    def __init__(self, *decodes):
        self.decodes = [Decoded(d) if isinstance(d, str) else d for d in decodes]
        self.attempts = []

    def __call__(self, attempt):
        self.attempts.append(attempt)
        return self.decodes[len(self.attempts) - 1]


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
    """Stands in for ctranslate2.models.Whisper: records encodes and generate arguments; each
    output is token ids, or (token ids, score, no-speech probability)."""

    def __init__(self, *outputs):
        self.outputs, self.encoded_frames, self.generate_kwargs = list(outputs), [], []

    def encode(self, features, to_cpu=False):
        self.encoded_frames.append(features.shape[-1])
        return f"encoded {features.shape[-1]}"

    def generate(self, encoded, prompts, **kwargs):
        self.generate_kwargs.append({"encoded": encoded, **kwargs})
        out = self.outputs.pop(0)
        ids, score, no_speech_prob = out if isinstance(out, tuple) else (out, -0.1, 0.01)
        return [SimpleNamespace(sequences_ids=[ids], scores=[score], no_speech_prob=no_speech_prob)]


VOCAB = {1: " one", 2: " two", 3: " three", 4: " four", 7: " Italy", 8: ".", 9: " I"}


def detokenize(ids):
    return "".join(VOCAB[t] for t in ids)


def test_window_decoder_encodes_each_window_once_and_samples_with_full_top_k():
    model = FakeWhisper([1], [2], [3], [4])
    decoder = WindowDecoder(model, [50258], np.zeros((80, 150), np.float32), 40, detokenize)
    for attempt in [
        DecodeAttempt(600, 0.0),
        DecodeAttempt(3000, 0.0),
        DecodeAttempt(3000, 0.2),
        DecodeAttempt(3000, 0.4),
    ]:
        decoder(attempt)
    assert model.encoded_frames == [600, 3000]
    greedy, wide, hot, hotter = model.generate_kwargs
    assert greedy["encoded"] == "encoded 600" and greedy["beam_size"] == 1 and "sampling_topk" not in greedy
    assert hot["encoded"] == "encoded 3000" and hot["sampling_topk"] == 0
    assert (hot["sampling_temperature"], hotter["sampling_temperature"]) == (0.2, 0.4)
    assert all(k["max_length"] == 40 for k in model.generate_kwargs)


def test_window_decoder_reads_the_no_speech_evidence_from_the_same_generate():
    # CTranslate2's score for " I" + end: (log p(I) + log p(end)) / 1 token; the mean is over 2
    model = FakeWhisper(([9], -4.6, 0.62))
    decoder = WindowDecoder(model, [50258], np.zeros((80, 40), np.float32), 20, detokenize)
    decoded = decoder(DecodeAttempt(600, 0.0))
    assert decoded == Decoded("I", pytest.approx(0.62), pytest.approx(-2.3))
    (kwargs,) = model.generate_kwargs  # one generate: the evidence costs no extra decode
    assert kwargs["return_scores"] and kwargs["return_no_speech_prob"]


def test_a_looping_generate_is_retried_and_the_clean_text_returned():
    # token ids stand for words here: 7 = "Italy", 8 = "."
    model = FakeWhisper([7] * 12, [7, 8])
    decoder = WindowDecoder(model, [50258], np.zeros((80, 60), np.float32), 20, detokenize)
    result = transcribe_until_clean(decoder, PLAN)
    assert (result.text, result.attempts) == ("Italy.", 2)
    assert model.encoded_frames == [600, 1500]


def faster_whisper_skips(no_speech_prob, avg_logprob, no_speech_threshold, log_prob_threshold):
    """faster-whisper's segment skip, as written in WhisperModel.generate_segments."""
    should_skip = no_speech_prob > no_speech_threshold
    if avg_logprob > log_prob_threshold:
        should_skip = False
    return should_skip


probability_st = st.floats(0.0, 1.0)
logprob_st = st.floats(-10.0, 0.0)


@given(probability_st, logprob_st, probability_st, st.floats(-3.0, 0.0))
def test_the_no_speech_rule_is_faster_whispers_skip(
    no_speech_prob, avg_logprob, no_speech_threshold, log_prob_threshold
):
    rule = NoSpeechRule(no_speech_threshold, log_prob_threshold)
    assert rule(Decoded("I", no_speech_prob, avg_logprob)) == faster_whisper_skips(
        no_speech_prob, avg_logprob, no_speech_threshold, log_prob_threshold
    )


@pytest.mark.parametrize(
    "no_speech_prob, avg_logprob, looped, no_speech",
    [
        (0.62, -2.29, False, True),  # a cough heard as "I"
        (0.45, -2.77, False, True),  # the pipeline's cough, on a short window
        (0.62, -0.47, False, False),  # likely silence, but whisper is sure of the words: keep them
        (0.12, -2.10, False, False),  # an unsure transcript of speech: keep it
        (0.40, -2.00, False, False),  # at the threshold is not above it
        (0.62, -1.00, False, True),  # at the log-prob threshold counts, as in faster-whisper
        (0.62, -0.10, True, True),  # a confident loop on likely silence
        (0.05, -0.10, True, False),  # a loop on speech
    ],
)
def test_no_speech_needs_a_likely_silence_and_an_unsure_transcript(no_speech_prob, avg_logprob, looped, no_speech):
    assert NoSpeechRule()(Decoded("I", no_speech_prob, avg_logprob), looped=looped) == no_speech


@given(st.lists(st.floats(-8.0, 0.0), min_size=1, max_size=40), st.sampled_from([0.5, 1.0, 2.0]))
def test_average_logprob_is_the_mean_over_the_tokens_and_the_end_token(logprobs, length_penalty):
    # CTranslate2 scores n tokens + the end token as their summed log-prob / n**length_penalty
    n = len(logprobs) - 1
    score = sum(logprobs) / max(n, 1) ** length_penalty
    expected = np.mean(logprobs) if n else score
    assert average_logprob(score, n, length_penalty) == pytest.approx(expected, abs=1e-9)


NOISE = Decoded("I", 0.62, -2.3)


def test_a_no_speech_decode_is_silence_without_retries():
    decode = ScriptedDecode(NOISE, "never decoded")
    result = transcribe_until_clean(decode, PLAN)
    assert (result.text, result.attempts, result.no_speech) == ("", 1, True)
    assert result.texts == ("I",)


def test_a_loop_on_noise_is_silence_not_a_collapsed_word():
    loop = "I'm not I'm not I'm not I'm not"
    # the loop itself passes the rule: no retries
    assert transcribe_until_clean(ScriptedDecode(Decoded(loop, 0.7, -1.5)), PLAN).text == ""
    # confident loops on every attempt: the no-speech probability decides alone
    decode = ScriptedDecode(*[Decoded(loop, 0.7, -0.2)] * len(PLAN))
    result = transcribe_until_clean(decode, PLAN)
    assert (result.text, result.attempts, result.no_speech) == ("", len(PLAN), True)
    # a retry that hears no speech ends the retries
    result = transcribe_until_clean(ScriptedDecode(Decoded(loop, 0.3, -0.2), Decoded("I", 0.7, -2.0)), PLAN)
    assert (result.text, result.attempts, result.no_speech) == ("", 2, True)


def test_a_loop_on_speech_is_still_retried_then_collapsed():
    decode = ScriptedDecode(*[Decoded("Italy Italy Italy Italy", 0.1, -0.2)] * len(PLAN))
    result = transcribe_until_clean(decode, PLAN, no_speech=NoSpeechRule())
    assert (result.text, result.collapsed, result.no_speech) == ("Italy", True, False)


def test_loop_retry_steps_temperatures_as_whisper_does():
    assert LoopRetry.stepped(1500, 0.2, 0.6) == LoopRetry((1500,), (0.2, 0.4, 0.6))
    assert LoopRetry.stepped(3000, 0.25, 1.0) == LoopRetry((3000,), (0.25, 0.5, 0.75, 1.0))
    assert LoopRetry.stepped(0, 0.0, 0.6) == LoopRetry((), ())
    assert decode_plan(600, LoopRetry.stepped(0, 0.0, 0.6)) == [DecodeAttempt(600, 0.0)]


def test_asr_config_defaults_are_the_rules_defaults():
    cfg = ASRConfig()
    assert (
        LoopRetry.stepped(cfg.loop_retry_window_frames, cfg.loop_retry_temperature_step, cfg.loop_retry_max_temperature)
        == LoopRetry()
    )
    assert NoSpeechRule(cfg.no_speech_threshold, cfg.log_prob_threshold) == NoSpeechRule()


@pytest.mark.slow
def test_short_window_transcript_matches_the_words(stack, question_wav):
    from audio.wavio import read_wav

    # as the session cuts an utterance: with the VAD's preroll of quiet before the first word
    # (without it, whisper-base int8 heard "friends" on an AVX-512 EPYC; its 30 s decode heard "France")
    audio = np.concatenate([np.zeros(int(0.32 * SAMPLE_RATE_HZ), np.float32), read_wav(question_wav)])
    text = stack.asr.transcribe(audio).lower()
    assert "capital of france" in text
    assert stack.asr.last_transcription.attempts == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "fragment, lead_s", [("Mount Everest?", 0.0), ("largest ocean?", 0.6), ("the Pacific?", 0.3), ("to swim?", 0.3)]
)
def test_short_fragments_never_come_back_as_a_loop(stack, fragment, lead_s):
    from audio.wavio import pcm16_to_float, resample

    speech = resample(pcm16_to_float(stack.tts.synthesize_all(fragment, deterministic=True)), stack.tts.rate_hz, 16000)
    audio = np.concatenate([np.zeros(int(lead_s * 16000), np.float32), speech])
    result = stack.asr.transcribe_detailed(audio)
    assert result.text and not is_repetition_loop(result.text)
    if fragment == "Mount Everest?":  # greedy whisper-base loops on this one at 600 frames
        assert "everest" in result.text.lower()


def noise_clips(seed=0):
    """Non-speech a misfiring VAD passes on, each after 0.3 s of silence: a cough, a door slam,
    0.5 s of white noise at five levels, a keyboard-click train, breathing."""
    rng = np.random.default_rng(seed)
    rate = 16000
    t = np.arange(int(rate * 0.35)) / rate
    clips = {"cough": 0.5 * rng.standard_normal(len(t)) * np.exp(-t / 0.08) * (1 - np.exp(-t / 0.01))}
    t = np.arange(int(rate * 0.4)) / rate
    clips["door slam"] = 0.9 * np.sin(2 * np.pi * 70 * t) * np.exp(-t / 0.06) + 0.3 * rng.standard_normal(
        len(t)
    ) * np.exp(-t / 0.02)
    for level in (0.003, 0.01, 0.03, 0.1, 0.3):
        clips[f"white noise {level}"] = level * rng.standard_normal(rate // 2)
    clicks, click = np.zeros(rate), np.arange(int(rate * 0.005)) / rate
    for k in range(9):  # ~9 keys/s, each a 5 ms decaying click
        at = int((k / 9 + rng.uniform(0, 0.05)) * rate)
        burst = 0.4 * rng.standard_normal(len(click)) * np.exp(-click / 0.001)
        clicks[at : at + len(click)] += burst[: rate - at]
    clips["keyboard"] = clicks
    n = int(rate * 1.2)  # breathing: 200-2000 Hz noise, falling above 500 Hz, one slow swell
    freqs = np.fft.rfftfreq(n, 1 / rate)
    breath = np.fft.irfft(
        np.fft.rfft(rng.standard_normal(n)) * ((freqs > 200) & (freqs < 2000)) / np.maximum(1, freqs / 500), n
    )
    for level in (0.05, 0.2):
        swell = np.sin(np.pi * np.arange(n) / n) ** 2
        clips[f"breathing {level}"] = level * breath / np.abs(breath).max() * swell
    return {name: np.concatenate([np.zeros(int(0.3 * rate)), clip]).astype(np.float32) for name, clip in clips.items()}


@pytest.mark.slow
def test_noise_transcribes_to_nothing(stack):
    heard = {name: stack.asr.transcribe_detailed(clip) for name, clip in noise_clips().items()}
    assert {name: r.text for name, r in heard.items() if r.text} == {}
    assert all(r.no_speech and r.texts[0] for r in heard.values())  # whisper did hallucinate


@pytest.mark.slow
@pytest.mark.parametrize(
    "answer, word", [("Yes.", "yes"), ("No.", "no"), ("Thanks.", "thank"), ("Paris.", "paris"), ("Okay.", "okay")]
)
def test_short_spoken_answers_are_not_taken_for_noise(stack, tmp_path, answer, word):
    from audio.wavio import read_wav, write_wav

    speech = stack.tts.synthesize_all(answer, deterministic=True)
    write_wav(tmp_path / "answer.wav", speech, stack.tts.rate_hz)
    audio = np.concatenate([np.zeros(4800, np.float32), read_wav(tmp_path / "answer.wav")])  # 0.3 s lead
    result = stack.asr.transcribe_detailed(audio)
    assert word in result.text.lower() and not result.no_speech


@pytest.mark.slow
def test_utterances_decoded_in_one_batch_get_what_each_gets_alone(stack, question_wav, monkeypatch):
    """Sessions' decodes batched on the ASR thread (`transcribe_batch`): same text, attempts and
    evidence as alone, for clean, looping (retried alone) and non-batchable utterances."""
    from audio.wavio import pcm16_to_float, read_wav, resample

    def spoken(text: str, lead_s: float) -> np.ndarray:
        speech = pcm16_to_float(stack.tts.synthesize_all(text, deterministic=True))
        return np.concatenate([np.zeros(int(lead_s * 16000), np.float32), resample(speech, stack.tts.rate_hz, 16000)])

    asr = stack.asr
    audios = [
        spoken("Mount Everest?", 0.0),  # greedy loops at 600 frames: retried alone after the batch
        spoken("largest ocean?", 0.6),
        np.concatenate([np.zeros(5120, np.float32), read_wav(question_wav)]),
        spoken("the Pacific?", 0.3),
        np.zeros(0, np.float32),  # nothing to decode
        spoken("Name three rivers in Europe and say which one of them is the longest.", 2.5),  # another window
    ]
    keys = [asr.batch_key(a) for a in audios]
    assert keys[0] == keys[1] == keys[3] and keys[4] is None and keys[5] not in (None, keys[0])
    alone = [asr.transcribe_detailed(a) for a in audios]

    class Recording:  # the CTranslate2 model, counting the utterances of each generate call
        def __init__(self, model):
            self.model, self.batches = model, []

        def encode(self, *args, **kwargs):
            return self.model.encode(*args, **kwargs)

        def generate(self, encoded, prompts, **kwargs):
            self.batches.append(len(prompts))
            return self.model.generate(encoded, prompts, **kwargs)

    recording = Recording(asr.model.model)
    monkeypatch.setattr(asr.model, "model", recording)
    together = asr.transcribe_batch(audios)
    assert max(recording.batches) == sum(k == keys[0] for k in keys)  # the four of one window, in one call
    assert alone[0].attempts > 1 and "everest" in alone[0].text.lower()
    for a, b in zip(alone, together):
        assert (b.text, b.attempts, b.no_speech, b.texts) == (a.text, a.attempts, a.no_speech, a.texts)
        for x, y in zip(a.decodes, b.decodes):
            assert x.no_speech_prob == pytest.approx(y.no_speech_prob, abs=1e-4)
            assert x.avg_logprob == pytest.approx(y.avg_logprob, abs=1e-4)
