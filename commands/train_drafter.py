"""`voice train-drafter`: self-distil an MTP drafter from the target alone.

In: the target LLM, a prompt set generated here from templates × topics / tasks / places
(no datasets; the decode-bench prompts are excluded, and a set of topics is held out
entirely for validation), steps, device. Out: a `decode.mtp` head saved as fp16
safetensors + config.json + training.json, with held-out acceptance printed as it trains.

Data: the target's own batched replies (bf16 for speed; a fraction sampled at temperature
0.8 so that contexts are more varied than greedy alone), then one teacher-forced fp32 pass
over each whole sequence for its hidden states H_t (plus the residual stream at the
head's `feature_layers`) and argmax labels A_t — exactly what verification will compare
against. Training: for anchor t, f_1 = step(start(H_t), E[x_{t+1}]) predicts A_{t+1};
f_j = step(f_{j-1}, E[x_{t+j}]) predicts A_{t+j} for j ≤ depth (teacher forcing: a later
draft only counts if the earlier ones were accepted), cross-entropy over the reduced
vocabulary plus a small feature loss f_j ≈ H_{t+j}.
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from decode.mtp import DEFAULT_PATH, MTPConfig, MTPHead, save_mtp
from decode.target import check_feature_layers
from voice.config import Config, ConfigError
from voice.llm import load_causal_lm, torch_dtype
from voice.models import llm_path

log = logging.getLogger(__name__)

TEMPLATES = [
    "What is {t}?", "Can you explain {t} in simple terms?", "Tell me something interesting about {t}.",
    "How does {t} work?", "Why is {t} important?", "Give me three facts about {t}.",
    "What are the benefits of {t}?", "What should a beginner know about {t}?",
    "Describe {t} in a few sentences.", "What is the history of {t}?", "How can I learn more about {t}?",
    "What are common mistakes people make with {t}?", "Is {t} good for kids?", "Explain {t} to a child.",
    "What's the difference between {t} and something similar?", "Give me a quick tip about {t}.",
    "What do experts say about {t}?", "Write a short paragraph about {t}.", "How do I get started with {t}?",
    "What are the pros and cons of {t}?", "Tell me a short joke about {t}.", "Write a short poem about {t}.",
    "Give me some tips about {t}.", "Can you recommend something related to {t}?",
    "I'm curious about {t}. What can you tell me?", "Summarize what you know about {t}.",
    "What would happen without {t}?", "How has {t} changed over time?", "What is a fun fact about {t}?",
    "Should I care about {t}? Why?",
]
TOPICS = [
    "the moon", "volcanoes", "coffee", "sleep", "exercise", "the ocean", "photosynthesis", "gravity",
    "electric cars", "the internet", "recycling", "honey bees", "dinosaurs", "the stock market",
    "meditation", "vitamin D", "rainbows", "earthquakes", "chess", "gardening", "the human heart",
    "black holes", "climate change", "the Roman Empire", "pizza", "jazz music", "the piano", "yoga",
    "solar panels", "the brain", "friendship", "saving money", "cooking pasta", "baking bread",
    "learning a language", "time management", "public speaking", "the water cycle", "clouds",
    "penguins", "elephants", "dogs", "cats", "the Eiffel Tower", "the Great Wall of China",
    "airplanes", "trains", "bicycles", "running", "swimming", "tea", "chocolate", "vegetables",
    "the solar system", "Mars", "the sun", "stars", "magnets", "electricity", "batteries",
    "computers", "smartphones", "artificial intelligence", "robots", "the printing press",
    "the Olympics", "soccer", "basketball", "mountains", "deserts", "rainforests", "rivers",
    "the Amazon", "Antarctica", "tides", "hurricanes", "snow", "seasons", "calendars", "clocks",
    "birthdays", "holidays", "museums", "libraries", "books", "poetry", "painting", "photography",
    "movies", "video games", "camping", "hiking", "fishing", "bread", "cheese", "apples", "bananas",
    "water", "salt", "sugar", "protein", "fiber", "headaches", "colds", "hand washing", "vaccines",
    "the immune system", "bones", "muscles", "the eyes", "hearing", "dreams", "memory", "stress",
    "happiness", "kindness", "teamwork", "leadership", "budgeting", "taxes", "banks", "inflation",
    "renting an apartment", "moving house", "job interviews", "writing a resume", "email etiquette",
    "houseplants", "composting", "birds", "butterflies", "sharks", "whales", "octopuses", "frogs",
    "tornadoes", "the Arctic", "coral reefs", "bamboo", "mushrooms", "spiders", "ants", "wolves",
    "horses", "dolphins", "eagles", "bats", "snakes", "turtles", "lions", "tigers", "pandas",
    "the Nile", "the Pacific Ocean", "islands", "caves", "lakes", "forests", "wetlands", "soil",
    "the atmosphere", "the ozone layer", "wind power", "nuclear energy", "oil", "plastic", "glass",
    "steel", "wood", "cotton", "wool", "silk", "diamonds", "gold", "copper", "the periodic table",
    "atoms", "DNA", "cells", "bacteria", "viruses", "antibiotics", "allergies", "blood pressure",
    "the lungs", "the skin", "teeth", "posture", "hydration", "breakfast", "fasting", "salads",
    "rice", "noodles", "spices", "olive oil", "eggs", "milk", "yogurt", "ice cream", "cake",
    "the guitar", "drums", "singing", "opera", "rock music", "classical music", "dancing",
    "theater", "comics", "novels", "fairy tales", "mythology", "ancient Egypt", "the pyramids",
    "the Renaissance", "the Industrial Revolution", "the Moon", "satellites", "rockets", "astronauts",
    "the International Space Station", "Jupiter", "Saturn", "comets", "meteors", "eclipses",
    "the telephone", "radio", "television", "email", "social media", "passwords", "cybersecurity",
    "cloud computing", "programming", "Python", "spreadsheets", "3D printing", "drones", "electric bikes",
    "public transport", "traffic", "cities", "villages", "farming", "fishing boats", "bridges",
    "skyscrapers", "architecture", "interior design", "minimalism", "habits", "motivation",
    "procrastination", "creativity", "curiosity", "patience", "gratitude", "journaling", "volunteering",
    "pets", "parenting", "grandparents", "weddings", "retirement", "insurance", "credit cards",
    "investing", "cryptocurrency", "online shopping", "recipes", "board games", "puzzles", "magic tricks",
]


TASK_TEMPLATES = [
    "How do I {a}?", "What's the best way to {a}?", "Can you give me tips to {a}?",
    "I want to {a}. Where do I start?", "What do I need to {a}?", "How long does it take to {a}?",
    "Is it hard to {a}?", "What's a common mistake when trying to {a}?", "Give me three steps to {a}.",
    "Help me {a}.", "Why should I {a}?", "How can I {a} faster?", "What's an easy way to {a}?",
    "Explain how to {a} in simple words.", "How often should I {a}?",
]
TASKS = [
    "make a good cup of coffee", "fall asleep faster", "stay focused at work", "cook rice", "bake cookies",
    "learn to swim", "save money each month", "write a good email", "start running", "plant a vegetable garden",
    "clean my kitchen", "fix a flat bike tire", "learn to play guitar", "make friends in a new city",
    "prepare for an exam", "remember names", "reduce stress", "drink more water", "wake up early",
    "organize my closet", "paint a room", "make pancakes", "train my dog", "take better photos",
    "speak more confidently", "write a short story", "change a light bulb", "grow herbs indoors",
    "eat more vegetables", "plan a trip", "pack a suitcase", "make a budget", "study for a test",
    "stop procrastinating", "learn to code", "meditate", "stretch after a workout", "make a smoothie",
    "get better at chess", "keep a journal", "make soup", "brew green tea", "draw a cat",
    "clean my laptop screen", "back up my phone", "choose a good password", "build a birdhouse",
    "care for a cactus", "set up a fish tank", "learn to juggle", "improve my handwriting",
    "read more books", "cut back on sugar", "cook a steak", "make homemade pizza", "wash a wool sweater",
    "remove a coffee stain", "keep bread fresh", "sharpen a knife", "tie a tie", "sew a button",
    "ask for a raise", "give a good presentation", "write a thank-you note", "plan a birthday party",
    "learn a new word every day", "calm down before an interview", "make my home smell nice",
    "get rid of hiccups", "warm up before exercise", "do a push-up", "learn to ski", "ride a horse",
]
PLACE_TEMPLATES = [
    "What is the capital of {p}?", "What language do people speak in {p}?", "What is {p} famous for?",
    "What's the weather usually like in {p}?", "What food should I try in {p}?",
    "Tell me a fun fact about {p}.", "How big is {p}?", "When is the best time to visit {p}?",
]
PLACES = [
    "Japan", "Italy", "Brazil", "Canada", "Egypt", "India", "Kenya", "Mexico", "Norway", "Peru",
    "Spain", "Thailand", "Australia", "Germany", "Greece", "Ireland", "Portugal", "Vietnam",
    "Argentina", "Iceland", "New Zealand", "Morocco", "Sweden", "Turkey", "Chile", "Poland",
    "Scotland", "Switzerland", "the Netherlands", "South Korea", "Cuba", "Nepal",
]
SMALL_TALK = [
    "Hi, how are you?", "Good morning!", "Thanks for your help.", "What can you do?", "Who are you?",
    "Tell me a joke.", "Tell me something funny.", "I'm bored. Any ideas?", "I feel tired today.",
    "What's your favorite color?", "Do you like music?", "Can you tell me a riddle?",
    "Say something nice.", "Give me a random fact.", "What should I do this weekend?",
    "Tell me a short story.", "Give me a motivational quote.", "What's a good name for a cat?",
    "What's a good name for a dog?", "Can you help me?", "I had a great day!", "Good night!",
]
# Never used for training: a held-out validation set of whole topics.
HELD_OUT_TOPICS = [
    "lightning", "giraffes", "the violin", "glaciers", "submarines", "tomatoes", "origami", "the Moon landing",
    "kangaroos", "sunflowers", "the Sahara", "telescopes", "owls", "skateboarding", "carrots", "waterfalls",
]


def _fill(templates: list[str], key: str, values: list[str]) -> list[str]:
    return [t.format(**{key: v}) for t, v in itertools.product(templates, values)]


def prompt_bank(topics: list[str] = TOPICS) -> list[str]:
    """Every prompt the generator can make from `topics` plus the fixed tasks, places and small talk."""
    rng = random.Random(1)
    pairs = [f"What's the difference between {a} and {b}?" for a, b in itertools.permutations(topics[:60], 2)]
    return (_fill(TEMPLATES, "t", topics) + _fill(TASK_TEMPLATES, "a", TASKS) + _fill(PLACE_TEMPLATES, "p", PLACES)
            + SMALL_TALK + rng.sample(pairs, min(len(pairs), 800)))


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


@dataclass
class Sequences:
    """Token sequences flattened end to end, with the target's features and argmax labels."""

    tokens: torch.Tensor  # [N]
    features: torch.Tensor  # [N, F] fp16: last hidden state, then the feature layers
    labels: torch.Tensor  # [N] the target's argmax after each position
    anchors: torch.Tensor  # [M] positions t (last prompt token onward) with t + depth in the same sequence
    starts: torch.Tensor  # [N] where each position's sequence starts (context windows stop there)


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[str], max_new: int, batch: int,
                     sample: bool = False) -> list[tuple[list[int], int]]:
    """Batched replies (left padding), greedy or sampled (temperature 0.8, top-p 0.95).

    Returns (prompt + reply ids, prompt length) per prompt.
    """
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    how = dict(do_sample=True, temperature=0.8, top_p=0.95) if sample else dict(do_sample=False)
    out: list[tuple[list[int], int]] = []
    for i in tqdm(range(0, len(prompts), batch), desc="sample" if sample else "generate", unit="batch"):
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts[i:i + batch]]
        enc = tokenizer(chats, return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new, pad_token_id=eos, **how)
        for row, mask in zip(gen, enc["attention_mask"]):
            ids = row[int((mask == 0).sum()):].tolist()
            n_prompt = int(mask.sum())
            reply = ids[n_prompt:]
            if eos in reply:
                reply = reply[:reply.index(eos) + 1]
            out.append((ids[:n_prompt] + reply, n_prompt))
    return out


def make_sequences(model, tokenizer, prompts: int, max_new: int, gen_batch: int, sampled: float,
                   seed: int = 0) -> dict:
    """Training and held-out sequences: a greedy reply per prompt plus `sampled` sampled ones per prompt."""
    from commands.decode_bench import bundled_prompts

    torch.manual_seed(seed)
    texts = training_prompts(prompts, set(bundled_prompts()), seed)
    extra = (texts * (int(sampled) + 1))[:round(sampled * len(texts))]
    train = generate_replies(model, tokenizer, texts, max_new, gen_batch)
    train += generate_replies(model, tokenizer, extra, max_new, gen_batch, sample=True)
    held = generate_replies(model, tokenizer, held_out_prompts(max(8, prompts // 50), seed), max_new, gen_batch)
    return {"train": train, "held_out": held}


@torch.inference_mode()
def teacher_pass(model, sequences: list[tuple[list[int], int]], depth: int, feature_layers: tuple[int, ...] = (),
                 batch: int = 16) -> Sequences:
    """fp32 features and argmax labels for every position (batched by length, right padding), in input order."""
    parts: list[tuple | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    for i in tqdm(range(0, len(order), batch), desc="teacher", unit="batch"):
        group = order[i:i + batch]
        width = max(len(sequences[j][0]) for j in group)
        x = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for r, j in enumerate(group):
            n = len(sequences[j][0])
            x[r, :n], mask[r, :n] = torch.tensor(sequences[j][0]), 1
        out = model(x.to(model.device), attention_mask=mask.to(model.device), output_hidden_states=True)
        states = out.hidden_states  # [0] the embeddings, [i] after i layers, [-1] after the final norm
        f = torch.cat([states[-1], *(states[layer] for layer in feature_layers)], dim=-1).to(torch.float16)
        a = out.logits.argmax(-1)
        for r, j in enumerate(group):
            n = len(sequences[j][0])
            parts[j] = (x[r, :n], f[r, :n], a[r, :n])
    anchors, starts, offset = [], [], 0
    for ids, n_prompt in sequences:
        anchors.append(torch.arange(n_prompt - 1, len(ids) - depth) + offset)
        starts.append(torch.full((len(ids),), offset))
        offset += len(ids)
    device = model.device
    tokens, feats, labels = (torch.cat(column) for column in zip(*parts))
    return Sequences(tokens.to(device), feats, labels.to(device), torch.cat(anchors).to(device),
                     torch.cat(starts).to(device))


def batch_tensors(data: Sequences, picks: torch.Tensor, depth: int, hidden_size: int, context: int = 0):
    """Features at t [B,F], tokens x_{t+1..t+depth} [B,depth], labels A_{t+1..}, targets H_{t+1..},
    and with `context` the features at t-context+1..t [B,W,F] with their validity [B,W]."""
    ahead = picks[:, None] + 1 + torch.arange(depth, device=picks.device)
    out = (data.features[picks].float(), data.tokens[ahead], data.labels[ahead],
           data.features[ahead, :hidden_size].float())
    if not context:
        return out + (None, None)
    window = picks[:, None] - torch.arange(context - 1, -1, -1, device=picks.device)
    valid = window >= data.starts[picks][:, None]
    return out + (data.features[window.clamp(min=0)].float(), valid)


def chain_losses(head: MTPHead, embed: torch.Tensor, rows: torch.Tensor, remap: torch.Tensor,
                 h0, toks, labels, feats, context=None, valid=None, feature_weight: float = 0.1):
    """Summed loss over draft positions, and per-position accuracy (as tensors)."""
    f, loss, hits = head.start(h0), 0.0, []
    kv = head.context_kv(context) if context is not None else None
    for j in range(toks.shape[1]):
        f = head.step(f, embed[toks[:, j]], kv, valid)
        logits = head.logits(f, rows)
        target = remap[labels[:, j]]
        loss = loss + F.cross_entropy(logits, target, ignore_index=-1) * (0.8 ** j)
        loss = loss + feature_weight * F.smooth_l1_loss(f, feats[:, j])
        hits.append((logits.argmax(-1) == target).float().mean())
    return loss, torch.stack(hits)


@torch.inference_mode()
def acceptance(head: MTPHead, data: Sequences, embed, rows, remap, depth: int, chunk: int = 4096) -> list[float]:
    """Greedy acceptance per draft position over every anchor (teacher-forced = earlier drafts accepted)."""
    head.eval()
    total, n = torch.zeros(depth, device=embed.device), 0
    for i in range(0, len(data.anchors), chunk):
        picks = data.anchors[i:i + chunk]
        _, hits = chain_losses(head, embed, rows, remap,
                               *batch_tensors(data, picks, depth, head.cfg.hidden_size, head.cfg.context))
        total += hits * len(picks)
        n += len(picks)
    head.train()
    return [round(float(v), 3) for v in total / max(n, 1)]


def fit(head: MTPHead, data: Sequences, held: Sequences, embed: torch.Tensor, rows: torch.Tensor,
        remap: torch.Tensor, steps: int, batch: int, depth: int, lr: float, evals: int = 5,
        seed: int = 0) -> list[dict]:
    """Train `head` in place (steps >= 10); returns held-out acceptance per position at `evals` points."""
    if steps < 10:
        raise ValueError(f"train for at least 10 steps, not {steps}")
    gen = torch.Generator(device=data.anchors.device).manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    # warm-up over 5 % of the steps (at least 2, so that short runs have a warm-up phase at all)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2 / steps))
    bar = tqdm(range(steps), desc="train", unit="step")
    history = []
    for step in bar:
        picks = data.anchors[torch.randint(len(data.anchors), (batch,), device=gen.device, generator=gen)]
        loss, _ = chain_losses(head, embed, rows, remap,
                               *batch_tensors(data, picks, depth, head.cfg.hidden_size, head.cfg.context))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // evals) == 0 or step == steps - 1:
            accepted = acceptance(head, held, embed, rows, remap, depth)
            history.append({"step": step + 1, "held_out_acceptance": accepted})
            bar.write(f"step {step + 1}: loss {loss.item():.2f}, held-out acceptance per position {accepted}")
    return history


def reduced_vocab(labels: torch.Tensor, vocab_size: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` most frequent label ids (sorted) and a full-vocabulary → reduced index map (-1: absent)."""
    counts = torch.bincount(labels.cpu(), minlength=vocab_size)
    ids = counts.argsort(descending=True)[:keep]
    ids = ids[counts[ids] > 0].sort().values
    remap = torch.full((vocab_size,), -1, dtype=torch.long)
    remap[ids] = torch.arange(len(ids))
    return ids, remap


def train_drafter(cfg: Config, prompts: int = 600, max_new: int = 96, steps: int = 1500,
                  batch: int = 256, depth: int = 4, layers: int = 1, vocab: int = 8192,
                  device: str = "cpu", out: str = "", gen_batch: int = 32, seed: int = 0,
                  sampled: float = 0.5, feature_layers: tuple[int, ...] | None = None, lr: float = 1e-3,
                  sequences_file: str = "", context: int = 0) -> dict:
    """Generate data (or reuse `sequences_file`), train, save; returns a summary.

    `feature_layers` None: a third and two thirds of the way up the target (EAGLE-3's low/mid/high idea).
    """
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    model, tokenizer = load_causal_lm(llm_path(cfg.models), device, torch.bfloat16)  # generation only
    n = model.config.get_text_config().num_hidden_layers
    if feature_layers is None:
        feature_layers = tuple(sorted({round(n / 3), round(2 * n / 3)} - {0, n}))
    try:
        feature_layers = check_feature_layers(feature_layers, n)
    except ValueError as err:
        raise ConfigError(f"--feature-layers: {err}") from None
    cached = Path(sequences_file) if sequences_file else None
    if cached and cached.is_file():
        seqs = json.loads(cached.read_text())
    else:
        seqs = make_sequences(model, tokenizer, prompts, max_new, gen_batch, sampled, seed)
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(seqs))
    t_gen = time.perf_counter() - t_start
    model = model.to(torch_dtype("float32"))
    data = teacher_pass(model, seqs["train"], depth, feature_layers)
    held = teacher_pass(model, seqs["held_out"], depth, feature_layers)
    embed = model.get_input_embeddings().weight.detach().float()
    vocab_ids, remap = reduced_vocab(data.labels, embed.shape[0], vocab)
    mcfg = MTPConfig(hidden_size=embed.shape[1], intermediate_size=model.config.intermediate_size,
                     layers=layers, vocab_ids=tuple(vocab_ids.tolist()), rms_norm_eps=model.config.rms_norm_eps,
                     target=str(cfg.models.llm), feature_layers=feature_layers, context=context)
    del model
    head = MTPHead(mcfg).to(device)
    history = fit(head, data, held, embed, embed[vocab_ids].to(device), remap.to(device), steps, batch, depth,
                  lr, seed=seed)
    out_dir = Path(out or DEFAULT_PATH)
    save_mtp(head.cpu(), out_dir)
    summary = {"sequences": len(seqs["train"]), "held_out_sequences": len(seqs["held_out"]),
               "prompts": prompts, "sampled_per_prompt": sampled, "max_new_tokens": max_new,
               "reply_tokens": sum(len(s) - p for s, p in seqs["train"]), "anchors": len(data.anchors),
               "vocab": len(vocab_ids), "steps": steps, "batch": batch, "depth": depth, "layers": layers,
               "feature_layers": list(mcfg.feature_layers), "context": context, "lr": lr, "device": device,
               "generate_s": round(t_gen, 1), "total_s": round(time.perf_counter() - t_start, 1),
               "held_out_acceptance_per_position": history[-1]["held_out_acceptance"], "history": history,
               "out": str(out_dir)}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    return summary
