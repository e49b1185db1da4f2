"""What the drafter is trained and benchmarked on: single prompts and multi-turn conversations.

In: templates × topics / tasks / places and small talk (no datasets; a set of whole topics is
held out for validation), follow-up templates, and the target, whose own greedy replies fill
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

TEMPLATES = [
    "What is {t}?",
    "Can you explain {t} in simple terms?",
    "Tell me something interesting about {t}.",
    "How does {t} work?",
    "Why is {t} important?",
    "Give me three facts about {t}.",
    "What are the benefits of {t}?",
    "What should a beginner know about {t}?",
    "Describe {t} in a few sentences.",
    "What is the history of {t}?",
    "How can I learn more about {t}?",
    "What are common mistakes people make with {t}?",
    "Is {t} good for kids?",
    "Explain {t} to a child.",
    "What's the difference between {t} and something similar?",
    "Give me a quick tip about {t}.",
    "What do experts say about {t}?",
    "Write a short paragraph about {t}.",
    "How do I get started with {t}?",
    "What are the pros and cons of {t}?",
    "Tell me a short joke about {t}.",
    "Write a short poem about {t}.",
    "Give me some tips about {t}.",
    "Can you recommend something related to {t}?",
    "I'm curious about {t}. What can you tell me?",
    "Summarize what you know about {t}.",
    "What would happen without {t}?",
    "How has {t} changed over time?",
    "What is a fun fact about {t}?",
    "Should I care about {t}? Why?",
]
TOPICS = [
    "the moon",
    "volcanoes",
    "coffee",
    "sleep",
    "exercise",
    "the ocean",
    "photosynthesis",
    "gravity",
    "electric cars",
    "the internet",
    "recycling",
    "honey bees",
    "dinosaurs",
    "the stock market",
    "meditation",
    "vitamin D",
    "rainbows",
    "earthquakes",
    "chess",
    "gardening",
    "the human heart",
    "black holes",
    "climate change",
    "the Roman Empire",
    "pizza",
    "jazz music",
    "the piano",
    "yoga",
    "solar panels",
    "the brain",
    "friendship",
    "saving money",
    "cooking pasta",
    "baking bread",
    "learning a language",
    "time management",
    "public speaking",
    "the water cycle",
    "clouds",
    "penguins",
    "elephants",
    "dogs",
    "cats",
    "the Eiffel Tower",
    "the Great Wall of China",
    "airplanes",
    "trains",
    "bicycles",
    "running",
    "swimming",
    "tea",
    "chocolate",
    "vegetables",
    "the solar system",
    "Mars",
    "the sun",
    "stars",
    "magnets",
    "electricity",
    "batteries",
    "computers",
    "smartphones",
    "artificial intelligence",
    "robots",
    "the printing press",
    "the Olympics",
    "soccer",
    "basketball",
    "mountains",
    "deserts",
    "rainforests",
    "rivers",
    "the Amazon",
    "Antarctica",
    "tides",
    "hurricanes",
    "snow",
    "seasons",
    "calendars",
    "clocks",
    "birthdays",
    "holidays",
    "museums",
    "libraries",
    "books",
    "poetry",
    "painting",
    "photography",
    "movies",
    "video games",
    "camping",
    "hiking",
    "fishing",
    "bread",
    "cheese",
    "apples",
    "bananas",
    "water",
    "salt",
    "sugar",
    "protein",
    "fiber",
    "headaches",
    "colds",
    "hand washing",
    "vaccines",
    "the immune system",
    "bones",
    "muscles",
    "the eyes",
    "hearing",
    "dreams",
    "memory",
    "stress",
    "happiness",
    "kindness",
    "teamwork",
    "leadership",
    "budgeting",
    "taxes",
    "banks",
    "inflation",
    "renting an apartment",
    "moving house",
    "job interviews",
    "writing a resume",
    "email etiquette",
    "houseplants",
    "composting",
    "birds",
    "butterflies",
    "sharks",
    "whales",
    "octopuses",
    "frogs",
    "tornadoes",
    "the Arctic",
    "coral reefs",
    "bamboo",
    "mushrooms",
    "spiders",
    "ants",
    "wolves",
    "horses",
    "dolphins",
    "eagles",
    "bats",
    "snakes",
    "turtles",
    "lions",
    "tigers",
    "pandas",
    "the Nile",
    "the Pacific Ocean",
    "islands",
    "caves",
    "lakes",
    "forests",
    "wetlands",
    "soil",
    "the atmosphere",
    "the ozone layer",
    "wind power",
    "nuclear energy",
    "oil",
    "plastic",
    "glass",
    "steel",
    "wood",
    "cotton",
    "wool",
    "silk",
    "diamonds",
    "gold",
    "copper",
    "the periodic table",
    "atoms",
    "DNA",
    "cells",
    "bacteria",
    "viruses",
    "antibiotics",
    "allergies",
    "blood pressure",
    "the lungs",
    "the skin",
    "teeth",
    "posture",
    "hydration",
    "breakfast",
    "fasting",
    "salads",
    "rice",
    "noodles",
    "spices",
    "olive oil",
    "eggs",
    "milk",
    "yogurt",
    "ice cream",
    "cake",
    "the guitar",
    "drums",
    "singing",
    "opera",
    "rock music",
    "classical music",
    "dancing",
    "theater",
    "comics",
    "novels",
    "fairy tales",
    "mythology",
    "ancient Egypt",
    "the pyramids",
    "the Renaissance",
    "the Industrial Revolution",
    "the Moon",
    "satellites",
    "rockets",
    "astronauts",
    "the International Space Station",
    "Jupiter",
    "Saturn",
    "comets",
    "meteors",
    "eclipses",
    "the telephone",
    "radio",
    "television",
    "email",
    "social media",
    "passwords",
    "cybersecurity",
    "cloud computing",
    "programming",
    "Python",
    "spreadsheets",
    "3D printing",
    "drones",
    "electric bikes",
    "public transport",
    "traffic",
    "cities",
    "villages",
    "farming",
    "fishing boats",
    "bridges",
    "skyscrapers",
    "architecture",
    "interior design",
    "minimalism",
    "habits",
    "motivation",
    "procrastination",
    "creativity",
    "curiosity",
    "patience",
    "gratitude",
    "journaling",
    "volunteering",
    "pets",
    "parenting",
    "grandparents",
    "weddings",
    "retirement",
    "insurance",
    "credit cards",
    "investing",
    "cryptocurrency",
    "online shopping",
    "recipes",
    "board games",
    "puzzles",
    "magic tricks",
]


TASK_TEMPLATES = [
    "How do I {a}?",
    "What's the best way to {a}?",
    "Can you give me tips to {a}?",
    "I want to {a}. Where do I start?",
    "What do I need to {a}?",
    "How long does it take to {a}?",
    "Is it hard to {a}?",
    "What's a common mistake when trying to {a}?",
    "Give me three steps to {a}.",
    "Help me {a}.",
    "Why should I {a}?",
    "How can I {a} faster?",
    "What's an easy way to {a}?",
    "Explain how to {a} in simple words.",
    "How often should I {a}?",
]
TASKS = [
    "make a good cup of coffee",
    "fall asleep faster",
    "stay focused at work",
    "cook rice",
    "bake cookies",
    "learn to swim",
    "save money each month",
    "write a good email",
    "start running",
    "plant a vegetable garden",
    "clean my kitchen",
    "fix a flat bike tire",
    "learn to play guitar",
    "make friends in a new city",
    "prepare for an exam",
    "remember names",
    "reduce stress",
    "drink more water",
    "wake up early",
    "organize my closet",
    "paint a room",
    "make pancakes",
    "train my dog",
    "take better photos",
    "speak more confidently",
    "write a short story",
    "change a light bulb",
    "grow herbs indoors",
    "eat more vegetables",
    "plan a trip",
    "pack a suitcase",
    "make a budget",
    "study for a test",
    "stop procrastinating",
    "learn to code",
    "meditate",
    "stretch after a workout",
    "make a smoothie",
    "get better at chess",
    "keep a journal",
    "make soup",
    "brew green tea",
    "draw a cat",
    "clean my laptop screen",
    "back up my phone",
    "choose a good password",
    "build a birdhouse",
    "care for a cactus",
    "set up a fish tank",
    "learn to juggle",
    "improve my handwriting",
    "read more books",
    "cut back on sugar",
    "cook a steak",
    "make homemade pizza",
    "wash a wool sweater",
    "remove a coffee stain",
    "keep bread fresh",
    "sharpen a knife",
    "tie a tie",
    "sew a button",
    "ask for a raise",
    "give a good presentation",
    "write a thank-you note",
    "plan a birthday party",
    "learn a new word every day",
    "calm down before an interview",
    "make my home smell nice",
    "get rid of hiccups",
    "warm up before exercise",
    "do a push-up",
    "learn to ski",
    "ride a horse",
]
PLACE_TEMPLATES = [
    "What is the capital of {p}?",
    "What language do people speak in {p}?",
    "What is {p} famous for?",
    "What's the weather usually like in {p}?",
    "What food should I try in {p}?",
    "Tell me a fun fact about {p}.",
    "How big is {p}?",
    "When is the best time to visit {p}?",
]
PLACES = [
    "Japan",
    "Italy",
    "Brazil",
    "Canada",
    "Egypt",
    "India",
    "Kenya",
    "Mexico",
    "Norway",
    "Peru",
    "Spain",
    "Thailand",
    "Australia",
    "Germany",
    "Greece",
    "Ireland",
    "Portugal",
    "Vietnam",
    "Argentina",
    "Iceland",
    "New Zealand",
    "Morocco",
    "Sweden",
    "Turkey",
    "Chile",
    "Poland",
    "Scotland",
    "Switzerland",
    "the Netherlands",
    "South Korea",
    "Cuba",
    "Nepal",
]
SMALL_TALK = [
    "Hi, how are you?",
    "Good morning!",
    "Thanks for your help.",
    "What can you do?",
    "Who are you?",
    "Tell me a joke.",
    "Tell me something funny.",
    "I'm bored. Any ideas?",
    "I feel tired today.",
    "What's your favorite color?",
    "Do you like music?",
    "Can you tell me a riddle?",
    "Say something nice.",
    "Give me a random fact.",
    "What should I do this weekend?",
    "Tell me a short story.",
    "Give me a motivational quote.",
    "What's a good name for a cat?",
    "What's a good name for a dog?",
    "Can you help me?",
    "I had a great day!",
    "Good night!",
]
# Never used for training: a held-out validation set of whole topics.
HELD_OUT_TOPICS = [
    "lightning",
    "giraffes",
    "the violin",
    "glaciers",
    "submarines",
    "tomatoes",
    "origami",
    "the Moon landing",
    "kangaroos",
    "sunflowers",
    "the Sahara",
    "telescopes",
    "owls",
    "skateboarding",
    "carrots",
    "waterfalls",
]


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


# A follow-up on the same topic ("{t}") or a switch to another ("{u}": a new topic's opening question).
FOLLOW_UPS = [
    "Can you tell me more?",
    "Why is that?",
    "Can you give me an example?",
    "How does that work?",
    "Is that true?",
    "What else should I know about {t}?",
    "Can you say that more simply?",
    "Interesting. What's the most surprising thing about {t}?",
    "Thanks. Can you sum that up in one sentence?",
    "And why does that matter?",
    "Wait, what do you mean?",
    "Okay. What's a common myth about {t}?",
    "How would I explain {t} to a friend?",
    "What do most people get wrong about {t}?",
    "Really? Tell me why.",
    "Thanks! {u}",
    "Okay, different question. {u}",
    "Got it. {u}",
    "Cool. {u}",
    "{u}",
]
# Only in the bundled benchmark set: phrasings the drafter never trained on.
BENCH_FOLLOW_UPS = [
    "Could you expand on that a little?",
    "What causes that?",
    "Do you have an example of that?",
    "Is there anything unusual about {t}?",
    "Hmm, and how is {t} useful to people?",
    "Sorry, can you put that another way?",
    "Alright. {u}",
    "Nice, thank you. {u}",
    "Next question: {u}",
]
BENCH_OPENERS = [
    "Tell me about {t}.",
    "What do you know about {t}?",
    "Can you describe {t} for me?",
    "What's interesting about {t}?",
    "Teach me something about {t}.",
    "I'd like to learn about {t}. Where do I start?",
]
# Training system turns besides the template's own (None): voice-assistant style instructions.
SYSTEM_PROMPTS = [
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    "You are a friendly voice assistant. Keep your answers short and clear.",
    "You are a helpful assistant that talks with the user out loud. Answer in a few sentences.",
    "You are a voice assistant. Be concise and warm.",
]


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
