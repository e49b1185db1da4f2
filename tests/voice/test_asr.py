import pytest

from voice.asr import LocalAgreement


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


@pytest.mark.slow
def test_short_window_transcript_matches_the_words(stack, question_wav):
    from audio.wavio import read_wav

    text = stack.asr.transcribe(read_wav(question_wav)).lower()
    assert "capital of france" in text
