"""What the drafter is trained and benchmarked on: single prompts and multi-turn conversations.

In: templates × topics / tasks / places and small talk (`data/prompt_sets.json`; no datasets;
a set of whole topics is held out for validation), follow-up templates, and the target, whose own greedy replies fill
the assistant turns. Out: prompt lists, and chat message lists — 1-3 earlier user/assistant
turns and a new user message, optionally after a system message — exactly what
`voice.pipeline` hands `ReplyModel.chat_ids` (which adds `llm.system_prompt` when set): each
assistant turn is the reply's text detokenised and stripped, as `Conversation.add` stores it.
The bundled `data/conversations.json` is held out (the held-out topics, openers and follow-up
phrasings never trained on), its assistant turns generated once by `scripts/make_conversations.py`.
Cost: planning is free; `generate_turns` runs one batched `generate` per turn depth.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from importlib.resources import files

from tqdm import tqdm

# The lists themselves are data (data/prompt_sets.json, shipped with the package).
_LISTS = json.loads(files("commands").joinpath("data/prompt_sets.json").read_text())
TEMPLATES: list[str] = _LISTS["templates"]  # "{t}": a topic
TOPICS: list[str] = _LISTS["topics"]
TASK_TEMPLATES: list[str] = _LISTS["task_templates"]  # "{a}": a task
TASKS: list[str] = _LISTS["tasks"]
PLACE_TEMPLATES: list[str] = _LISTS["place_templates"]  # "{p}": a place
PLACES: list[str] = _LISTS["places"]
SMALL_TALK: list[str] = _LISTS["small_talk"]
# Never used for training: a held-out validation set of whole topics.
HELD_OUT_TOPICS: list[str] = _LISTS["held_out_topics"]
# A follow-up on the same topic ("{t}") or a switch to another ("{u}": a new topic's opening question).
FOLLOW_UPS: list[str] = _LISTS["follow_ups"]
# Only in the bundled benchmark set: phrasings the drafter never trained on.
BENCH_FOLLOW_UPS: list[str] = _LISTS["bench_follow_ups"]
BENCH_OPENERS: list[str] = _LISTS["bench_openers"]
# Training system turns besides the template's own (None): voice-assistant style instructions.
SYSTEM_PROMPTS: list[str | None] = _LISTS["system_prompts"]


def _fill(templates: list[str], key: str, values: list[str]) -> list[str]:
    return [t.format(**{key: v}) for t, v in itertools.product(templates, values)]


def prompt_bank(topics: list[str] = TOPICS) -> list[str]:
    """Every prompt the generator can make from `topics` plus the fixed tasks, places and small talk."""
    rng = random.Random(1)
    pairs = [f"What's the difference between {a} and {b}?" for a, b in itertools.permutations(topics[:60], 2)]
    return (
        _fill(TEMPLATES, "t", topics)
        + _fill(TASK_TEMPLATES, "a", TASKS)
        + _fill(PLACE_TEMPLATES, "p", PLACES)
        + SMALL_TALK
        + rng.sample(pairs, min(len(pairs), 800))
    )


def training_prompts(n: int, exclude: set[str], seed: int = 0) -> list[str]:
    """n distinct prompts from the bank (no held-out topic), none in `exclude`."""
    pool = [p for p in prompt_bank(TOPICS) if p not in exclude]
    random.Random(seed).shuffle(pool)
    if n > len(pool):
        raise ValueError(f"only {len(pool)} distinct training prompts; ask for fewer")
    return pool[:n]


def held_out_prompts(n: int, seed: int = 0) -> list[str]:
    """n prompts about topics never used in training."""
    pool = _fill(TEMPLATES, "t", HELD_OUT_TOPICS)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def conversation_openers() -> list[str]:
    """First questions of training conversations: every topic template, some tasks and places, small talk."""
    rng = random.Random(2)
    return (
        TEMPLATES
        + rng.sample(_fill(TASK_TEMPLATES, "a", TASKS), 12)
        + rng.sample(_fill(PLACE_TEMPLATES, "p", PLACES), 6)
        + SMALL_TALK[:6]
    )


@dataclass(frozen=True)
class Plan:
    """The user turns of one conversation (the last one is the question to answer) and its system turn."""

    users: tuple[str, ...]
    system: str | None = None


def plan_conversations(
    n: int,
    topics: list[str],
    openers: list[str],
    follow_ups: list[str],
    seed: int = 0,
    systems: list[str | None] | None = None,
    earlier: tuple[int, ...] = (1, 2, 3),
    exclude: frozenset[str] = frozenset(),
) -> list[Plan]:
    """n conversations of 1 + `earlier[i % len(earlier)]` user turns on `topics`.

    An opener is a question with "{t}" (or a fixed question without), never one in `exclude`;
    a follow-up stays on the topic ("{t}") or switches to a new topic's opener ("{u}").
    """
    rng = random.Random(seed)

    def opener(topic: str) -> str:
        for _ in range(100):
            if (text := rng.choice(openers).replace("{t}", topic)) not in exclude:
                return text
        raise ValueError(f"every opener about {topic!r} is excluded")

    plans = []
    for i in range(n):
        topic = rng.choice(topics)
        users = [opener(topic)]
        for _ in range(earlier[i % len(earlier)]):
            template = rng.choice(follow_ups)
            if "{u}" in template:
                topic = rng.choice(topics)
                template = template.replace("{u}", opener(topic))
            users.append(template.replace("{t}", topic))
        plans.append(Plan(tuple(users), rng.choice(systems) if systems else None))
    return plans


def messages(plan: Plan, replies: list[str], system_prompt: str = "") -> list[dict[str, str]]:
    """The chat for the next reply: system turn (the plan's, else `system_prompt` if set), the turns
    answered so far with their replies, and the next user message."""
    msgs = []
    system = plan.system or system_prompt
    if system:
        msgs.append({"role": "system", "content": system})
    for user, reply in zip(plan.users, replies):
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    msgs.append({"role": "user", "content": plan.users[len(replies)]})
    return msgs


def reply_text(tokenizer, reply_ids: list[int]) -> str:
    """An assistant turn as the pipeline stores it: the reply's text without special tokens, stripped."""
    return tokenizer.decode(reply_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def generate_turns(
    generate, tokenizer, plans: list[Plan], system_prompt: str = ""
) -> tuple[list[tuple[list[int], int]], list[list[dict[str, str]]]]:
    """Answer every user turn of every plan with the target's greedy reply, turn depth by turn depth.

    `generate(chats) -> [(prompt + reply ids, prompt length)]` is the batched greedy generator.
    Returns every turn's (ids, prompt length) — turn 1 is single-turn, later ones carry the
    history — and each conversation's final chat (all earlier turns answered, last user message open).
    """
    replies: list[list[str]] = [[] for _ in plans]
    sequences: list[tuple[list[int], int]] = []
    for depth in tqdm(range(max(len(p.users) for p in plans) - 1), desc="conversation turns"):
        active = [i for i, p in enumerate(plans) if len(p.users) - 1 > depth]
        out = generate([messages(plans[i], replies[i], system_prompt) for i in active])
        for i, (ids, n_prompt) in zip(active, out):
            replies[i].append(reply_text(tokenizer, [t for t in ids[n_prompt:] if t != tokenizer.eos_token_id]))
        sequences += out
    return sequences, [messages(p, r, system_prompt) for p, r in zip(plans, replies)]


def bench_plans(n: int = 24, seed: int = 7) -> list[Plan]:
    """The bundled set's plan: held-out topics, openers and follow-ups never trained on, 1, 2, 3
    earlier turns in turn, the template's own system turn (the bench adds `llm.system_prompt`)."""
    return plan_conversations(n, HELD_OUT_TOPICS, BENCH_OPENERS, BENCH_FOLLOW_UPS, seed)


def bundled_conversations() -> list[list[dict[str, str]]]:
    """The held-out multi-turn conversations (each ends with the user message to answer)."""
    data = json.loads(files("commands").joinpath("data/conversations.json").read_text())
    return data["conversations"]
