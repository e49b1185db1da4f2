from collections import Counter

import pytest

from commands.decode_bench import bench_prompt_ids, bundled_prompts
from commands.prompt_sets import (
    BENCH_FOLLOW_UPS,
    FOLLOW_UPS,
    HELD_OUT_TOPICS,
    TEMPLATES,
    TOPICS,
    Plan,
    bench_plans,
    bundled_conversations,
    generate_turns,
    messages,
    plan_conversations,
    prompt_bank,
)
from voice.turns import Conversation


def test_plans_have_one_to_three_earlier_turns_on_their_topics_and_skip_excluded_openers():
    exclude = frozenset(t.format(t="coffee") for t in TEMPLATES[:10])
    plans = plan_conversations(60, ["coffee", "tea"], TEMPLATES, FOLLOW_UPS, seed=3, exclude=exclude)
    assert [len(p.users) for p in plans[:6]] == [2, 3, 4, 2, 3, 4]
    assert all(("coffee" in p.users[0]) != ("tea" in p.users[0]) for p in plans)
    assert not any(u in exclude for p in plans for u in p.users)
    assert not any("{" in u for p in plans for u in p.users)
    assert plans == plan_conversations(60, ["coffee", "tea"], TEMPLATES, FOLLOW_UPS, seed=3, exclude=exclude)
    with pytest.raises(ValueError, match="excluded"):
        plan_conversations(1, ["tea"], ["What is {t}?"], FOLLOW_UPS, exclude=frozenset({"What is tea?"}))


def test_messages_are_what_the_live_pipeline_sends():
    plan = Plan(("What is tea?", "Why is that?", "Thanks! What is coffee?"))
    replies = ["Tea is a drink.", "Because leaves."]
    history = Conversation(lambda msgs: 0)
    for user, reply in zip(plan.users, replies):
        history.add(user, reply)
    assert messages(plan, replies) == history.messages(plan.users[2])
    assert messages(plan, replies[:1])[-1] == {"role": "user", "content": "Why is that?"}
    with_system = messages(Plan(plan.users, "Be brief."), replies)
    assert with_system[0] == {"role": "system", "content": "Be brief."} and with_system[1:] == messages(plan, replies)
    assert messages(plan, [], system_prompt="From config.")[0]["content"] == "From config."


class _Tokenizer:
    """Token id = character code; 0 is EOS."""

    eos_token_id = 0

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids)


def test_turns_are_answered_in_order_with_the_targets_own_stripped_replies():
    seen = []

    def generate(chats):  # the "reply" names the turn; padded with spaces and ended by EOS
        seen.append(chats)
        out = []
        for chat in chats:
            prompt = [ord(c) for c in str(chat)]
            out.append((prompt + [ord(c) for c in f"  reply {len(chat) // 2} "] + [0], len(prompt)))
        return out

    plans = [Plan(("a?", "b?")), Plan(("c?", "d?", "e?", "f?"))]
    sequences, chats = generate_turns(generate, _Tokenizer(), plans)
    assert [len(batch) for batch in seen] == [2, 1, 1]  # one generate per depth, only chats still open
    assert len(sequences) == 4 and all(n < len(ids) for ids, n in sequences)
    assert chats[0] == [
        {"role": "user", "content": "a?"},
        {"role": "assistant", "content": "reply 0"},
        {"role": "user", "content": "b?"},
    ]
    assert [m["content"] for m in chats[1] if m["role"] == "assistant"] == ["reply 0", "reply 1", "reply 2"]
    assert seen[2][0] == chats[1][:-2] and seen[2][0][-1] == {"role": "user", "content": "e?"}


def test_bundled_conversations_are_held_out_multi_turn_chats():
    conversations = bundled_conversations()
    assert len(conversations) == 24
    earlier = Counter()
    training_prompts = set(prompt_bank(TOPICS))
    for chat, plan in zip(conversations, bench_plans()):
        roles = [m["role"] for m in chat]
        assert roles == ["user", "assistant"] * (len(chat) // 2) + ["user"]  # no system turn: the bench adds it
        assert tuple(m["content"] for m in chat if m["role"] == "user") == plan.users  # made from this plan
        assert all(m["content"].strip() == m["content"] != "" for m in chat)
        assert any(topic in chat[0]["content"] for topic in HELD_OUT_TOPICS)
        assert not any(m["content"] in training_prompts or m["content"] in FOLLOW_UPS for m in chat)
        earlier[len(chat) // 2] += 1
    assert earlier == {1: 8, 2: 8, 3: 8}
    assert not set(BENCH_FOLLOW_UPS) & set(FOLLOW_UPS)


def test_bench_prompt_ids_come_from_the_chosen_prompt_set():
    class Model:
        def chat_ids(self, msgs):
            return [len(msgs), len(msgs[-1]["content"])]

    model = Model()
    single = bench_prompt_ids(model, 3)
    assert single == [[1, len(p)] for p in bundled_prompts()[:3]]
    chats = bundled_conversations()[:5]
    assert bench_prompt_ids(model, 5, conversation=True) == [[len(c), len(c[-1]["content"])] for c in chats]
