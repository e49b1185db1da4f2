from hypothesis import given, strategies as st

from conftest import ByteTokenizer
from decode.drafters import NgramDrafter
from decode.spans import StableDetokenizer


@given(st.text(max_size=40), st.lists(st.integers(1, 4), max_size=40))
def test_deltas_concatenate_to_the_text_and_never_split_a_character(text, cuts):
    data = list(text.encode("utf-8"))
    detok = StableDetokenizer(ByteTokenizer())
    out, i = [], 0
    for c in cuts + [len(data)]:
        out.append(detok.push(data[i : i + c]))
        i += c
    out.append(detok.flush())
    assert all("\ufffd" not in piece for piece in out)
    assert "".join(out) == text


def test_ngram_drafter_continues_latest_match():
    d = NgramDrafter(max_n=2, min_n=1)
    assert d.propose([1, 2, 3, 9, 1, 2, 4, 7, 1, 2], 3, None).tokens == [4, 7, 1]
    assert d.propose([5, 6, 7], 3, None).tokens == []
    assert d.propose([1, 2, 1], 0, None).tokens == []
