"""A session scores a text's end of turn once: a reply to words whose score is in flight
waits for that prefill instead of running a second one, and cancelling one waiter leaves
the others their score."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import voice.pipeline
from voice.config import load_config


class SlowScorer:
    """`end_of_turn_prob` that waits until released and counts its calls (one prefill each)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, messages: list[dict]) -> float:
        self.calls.append(messages[-1]["content"])
        await asyncio.wait_for(self.release.wait(), 10)  # else the test never released the score
        return 0.7


def session_with(scorer: SlowScorer, monkeypatch) -> voice.pipeline.VoiceSession:
    monkeypatch.setattr(voice.pipeline, "SileroVAD", lambda: None)
    llm = SimpleNamespace(chat_ids=lambda msgs: [0] * sum(2 + len(m["content"].split()) for m in msgs))
    llm.end_of_turn_prob = scorer
    stack = SimpleNamespace(llm=llm, replies=lambda cfg: None)
    return voice.pipeline.VoiceSession(stack, load_config())


def test_a_text_in_flight_is_scored_once(monkeypatch) -> None:
    scorer = SlowScorer()

    async def main() -> list[float]:
        session = session_with(scorer, monkeypatch)
        first = asyncio.ensure_future(session._end_of_turn_prob("what is the capital of france"))
        second = asyncio.ensure_future(session._end_of_turn_prob("what is the capital of france"))
        other = asyncio.ensure_future(session._end_of_turn_prob("what is the capital"))
        while len(scorer.calls) < 2:
            await asyncio.sleep(0.01)
        scorer.release.set()
        return list(await asyncio.gather(first, second, other))

    assert asyncio.run(main()) == [0.7, 0.7, 0.7]
    assert sorted(scorer.calls) == ["what is the capital", "what is the capital of france"]


def test_cancelling_one_waiter_leaves_the_score_to_the_other(monkeypatch) -> None:
    scorer = SlowScorer()

    async def main() -> float:
        session = session_with(scorer, monkeypatch)
        reply = asyncio.ensure_future(session._end_of_turn_prob("tell me a joke"))
        score = asyncio.ensure_future(session._end_of_turn_prob("tell me a joke"))
        while not scorer.calls:
            await asyncio.sleep(0.01)
        reply.cancel()  # a dropped reply stops waiting
        await asyncio.sleep(0)
        scorer.release.set()
        return await score

    assert asyncio.run(main()) == 0.7
    assert scorer.calls == ["tell me a joke"]
