"""The reply model on the embedded SmolLM2 with the shipped MTP drafter (slow)."""

import asyncio

import pytest

from decode.controller import FixedController


async def scheduled_reply(llm, messages) -> list:
    """Every span of `llm.reply(messages)`, the decode scheduler's reply, read on the running loop."""
    return [span async for span in llm.reply(messages)]


@pytest.mark.slow
def test_shipped_mtp_drafter_is_lossless_and_accepts_drafts(stack):
    llm = stack.llm
    assert llm.drafter.name == "mtp"
    tried = accepted = 0
    for question in ("How do I make a good cup of tea?", "What is the tallest mountain in the world?"):
        messages = [{"role": "user", "content": question}]
        with llm.lock:
            plain = [t for s in llm.reply_plain(messages) for t in s.token_ids]
            # acceptance with k fixed: the adaptive controller rightly drafts less on a busy machine
            fixed = [
                t
                for s in llm.decoder.generate(llm.chat_ids(messages), llm.settings, controller=FixedController(2))
                for t in s.token_ids
            ]
            stats = llm.decoder.stats
        adaptive = [t for s in asyncio.run(scheduled_reply(llm, messages)) for t in s.token_ids]  # the scheduler's
        assert adaptive == plain and fixed == plain
        tried += stats.tried_at[0] if stats.tried_at else 0
        accepted += stats.accepted_at[0] if stats.accepted_at else 0
    # a drafter guessing at random would almost never match; the shipped head gets ~0.4 on bench prompts
    assert tried > 20 and accepted / tried > 0.15


def test_calibration_covers_every_draft_length_the_controller_may_pick():
    from voice.llm import calibration_ks

    assert calibration_ks(8) == list(range(9))
    assert calibration_ks(1) == [0, 1] and calibration_ks(0) == [0]


@pytest.mark.slow
def test_a_prompt_ending_in_an_assistant_message_continues_it(stack):
    llm = stack.llm
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    answer = "The sky looks blue because of Rayleigh scattering."
    ids = llm.chat_ids(question + [{"role": "assistant", "content": answer}])
    start = llm.chat_ids(question)
    assert ids[: len(start)] == start and llm.tokenizer.decode(ids[len(start) :]) == answer
    assert llm.end_of_user_id not in ids[len(start) :]


@pytest.mark.slow
def test_llm_end_of_turn_prob_is_low_mid_sentence_and_high_after_a_question(stack):
    def score(text: str) -> float:
        return asyncio.run(stack.llm.end_of_turn_prob([{"role": "user", "content": text}]))

    cut = score("Can you tell me the name of the")
    full = score("Can you tell me the name of the largest ocean?")
    # measured (P(end or closing punctuation) on the words without whisper's '?'): 0.0 vs 0.041
    assert cut < 0.005 < 0.02 < full
    assert score("What is the capital of France?") > 0.5
