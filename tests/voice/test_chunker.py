from hypothesis import given, strategies as st

from voice.chunker import PhraseChunker


def feed(text, pieces, first_words, max_words=18):
    ch = PhraseChunker(first_words, max_words)
    out, i = [], 0
    for n in pieces:
        out += ch.push(text[i : i + n])
        i += n
    out += ch.push(text[i:])
    return out + ch.flush()


def test_first_phrase_after_a_few_words_then_clauses():
    text = "The capital of France is Paris. It is known for the Eiffel Tower, museums and food."
    phrases = feed(text, [3] * 40, first_words=3)
    assert phrases[0] == "The capital of France"  # not cut after "of"
    assert phrases[1] == "is Paris."
    assert phrases[2] == "It is known for the Eiffel Tower,"
    assert " ".join(phrases) == text


def test_a_one_word_first_phrase_never_ends_on_a_word_that_leans_on_the_next():
    text = "The capital of France is Paris."
    assert feed(text, [1] * 40, first_words=1)[0] == "The capital"
    assert feed("Paris is the capital.", [1] * 40, first_words=1)[0] == "Paris"
    assert feed("It is a big one.", [1] * 40, first_words=1)[0] == "It is a big"
    ch = PhraseChunker(first_words=1, max_words=18)
    assert ch.push("The ") == [] and ch.push("moon ") == ["The moon"]


def test_first_phrase_released_at_early_punctuation():
    ch = PhraseChunker(first_words=4, max_words=18)
    assert ch.push("Sure! ") == ["Sure!"]


def test_numbers_and_words_are_never_split():
    text = "It is 3.14 or 1,000,000 meters away."
    phrases = feed(text, [1] * 60, first_words=2)
    assert "3.14" in " ".join(phrases) and all(not p.endswith(("3.", "1,")) for p in phrases)
    assert " ".join(phrases) == text


words = st.lists(st.text(alphabet="abcdefghij0123456789.,!?'", min_size=1, max_size=8), min_size=1, max_size=30)


@given(words, st.lists(st.integers(1, 7), max_size=50), st.integers(1, 5), st.integers(5, 20))
def test_phrases_rejoin_to_the_text_and_cut_only_at_spaces(ws, pieces, first, most):
    text = " ".join(ws)
    phrases = feed(text, pieces, first_words=first, max_words=most)
    assert " ".join(phrases) == text
    assert all(len(p.split()) <= max(first, most) for p in phrases)
