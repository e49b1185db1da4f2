"""The reply policy: brief replies that end on a sentence, and "tell me more"."""

import pytest
from hypothesis import given, strategies as st

from voice.reply_policy import (
    BUDGET,
    CAP,
    DONE,
    ReplyBudget,
    ReplyShaper,
    asks_for_more,
    ends_sentence,
    sentence_closes,
)


def feed(shaper, deltas, capped=None):
    """Push one token per delta; finish like the decoder would (capped unless the budget stopped it)."""
    out = []
    for d in deltas:
        out.append(shaper.push(d, 1))
        if shaper.stopped:
            break
    out.append(shaper.finish(capped=True if capped is None else capped))
    return out


def words(text):
    return [w + " " for w in text.split()]


def test_sentence_closes_skip_numbers_list_markers_abbreviations_and_initials():
    assert sentence_closes("It is 3.14 m. Yes! Really? ") == [13, 18, 26]
    assert sentence_closes("Steps:\n1. Boil water. 2. Wait ") == [21]
    assert sentence_closes("Ask Dr. Smith, e.g. today. J. K. Rowling wrote it. ") == [26, 50]
    assert sentence_closes('He said "stop." Then') == [15]
    assert ends_sentence("Paris is the capital.") and ends_sentence("Why? ")
    assert not ends_sentence("It is about") and not ends_sentence("Steps:\n1.") and not ends_sentence("")


def test_the_first_sentence_streams_and_later_ones_wait_for_their_close():
    shaper = ReplyShaper(ReplyBudget())
    assert shaper.push("The sky ", 2) == "The sky "
    assert shaper.push("is blue. Light ", 3) == "is blue."
    assert shaper.push("scatters", 1) == ""
    assert shaper.push(". Blue", 2) == " Light scatters."
    assert shaper.finish(capped=False) == " Blue"
    assert shaper.end == DONE and not shaper.shortened and shaper.sentences == 3


def test_the_soft_budget_ends_the_reply_at_the_next_sentence_close():
    shaper = ReplyShaper(ReplyBudget(soft_tokens=5))
    spoken = "".join(feed(shaper, words("One two three. Four five six seven eight nine. Ten eleven.")))
    assert spoken == "One two three. Four five six seven eight nine."
    assert shaper.end == BUDGET and shaper.shortened and shaper.sentences == 2
    shaper = ReplyShaper(ReplyBudget(soft_sentences=1))
    assert "".join(feed(shaper, words("Paris. It is big."))) == "Paris."


def test_the_hard_cap_drops_an_unfinished_later_sentence_from_speech():
    shaper = ReplyShaper(ReplyBudget(soft_tokens=50))
    spoken = "".join(feed(shaper, words("First one here. Second one is cut in"), capped=True))
    assert spoken == "First one here."
    assert shaper.end == CAP and shaper.dropped == "Second one is cut in" and shaper.sentences == 1


def test_a_first_sentence_longer_than_the_cap_is_all_spoken():
    shaper = ReplyShaper(ReplyBudget(soft_tokens=3))
    spoken = "".join(feed(shaper, words("a b c d e f"), capped=True))
    assert spoken == "a b c d e f " and shaper.end == CAP and shaper.dropped == ""


@given(
    st.lists(
        st.sampled_from(["The", " sky", " is", " blue", ".", " 3", ".14", "!", " Why", "?", "\n", "1", ". "]),
        max_size=40,
    ),
    st.integers(0, 12),
    st.integers(0, 3),
    st.booleans(),
)
def test_spoken_text_is_a_prefix_of_the_decoded_text_ending_on_a_sentence_unless_the_first_was_cut(
    deltas, soft_tokens, soft_sentences, capped
):
    shaper = ReplyShaper(ReplyBudget(soft_tokens, soft_sentences))
    spoken = "".join(feed(shaper, deltas, capped))
    assert "".join(deltas).startswith(spoken) and spoken == shaper.spoken
    if shaper.end == BUDGET or (shaper.end == CAP and shaper.sentences > 0 and shaper.dropped):
        assert ends_sentence(spoken)


@pytest.mark.parametrize(
    "text",
    [
        "Tell me more.",
        "tell me more please",
        "Go on.",
        "Okay, go on!",
        "Continue.",
        "Keep going",
        "And then?",
        "Please continue.",
        "More, please.",
        "What else?",
    ],
)
def test_asks_for_more_matches_close_variants(text):
    assert asks_for_more(text)


@pytest.mark.parametrize(
    "text",
    [
        "Tell me more about Paris.",
        "Go on a holiday",
        "Continue the story of Rome",
        "What is more important?",
        "",
        "Tell me a joke.",
    ],
)
def test_asks_for_more_leaves_real_questions_alone(text):
    assert not asks_for_more(text)


def test_at_close_only_after_a_confirmed_sentence_close():
    shaper = ReplyShaper(ReplyBudget())
    shaper.push("It is 3.", 2)
    assert not shaper.at_close  # "3." may go on as "3.14"
    shaper.push("14 m. The", 3)
    assert shaper.at_close and shaper.spoken == "It is 3.14 m."
