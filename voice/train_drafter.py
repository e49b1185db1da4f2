"""`voice train-drafter`: self-distil an MTP drafter from the target alone.

In: the target LLM, a prompt set generated here from templates × topics (no datasets;
the decode-bench prompts are excluded), steps, device. Out: a `decode.mtp` head saved as
fp16 safetensors + config.json, with held-in acceptance printed as training goes.

Data: the target's own batched greedy replies (bf16 on CPU for speed), then one
teacher-forced fp32 pass over each whole sequence for its hidden states H_t and argmax
labels A_t — exactly what verification will compare against. Training: for anchor t,
f_1 = step(H_t, E[x_{t+1}]) predicts A_{t+1}; f_j = step(f_{j-1}, E[x_{t+j}]) predicts
A_{t+j} for j ≤ depth (teacher forcing: a later draft only counts if the earlier ones were
accepted), cross-entropy over the reduced vocabulary plus a small feature loss f_j ≈ H_{t+j}.
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

from decode.mtp import MTPConfig, MTPHead, save_mtp
from voice.config import Config
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
]


def training_prompts(n: int, exclude: set[str], seed: int = 0) -> list[str]:
    """n distinct prompts from templates × topics, none in `exclude`."""
    pool = [t.format(t=topic) for t, topic in itertools.product(TEMPLATES, TOPICS)]
    pool = [p for p in pool if p not in exclude]
    random.Random(seed).shuffle(pool)
    if n > len(pool):
        raise ValueError(f"only {len(pool)} distinct training prompts; ask for fewer")
    return pool[:n]


@dataclass
class Sequences:
    """Token sequences with the target's fp32 hidden states and argmax labels."""

    tokens: list[torch.Tensor]  # [T] each
    hidden: list[torch.Tensor]  # [T, H] fp16
    labels: list[torch.Tensor]  # [T] argmax at each position
    reply_start: list[int]


@torch.inference_mode()
def generate_replies(model, tokenizer, prompts: list[str], max_new: int,
                     batch: int) -> list[tuple[list[int], int]]:
    """Batched greedy replies (left padding): (prompt + reply ids, prompt length) each."""
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[tuple[list[int], int]] = []
    for i in tqdm(range(0, len(prompts), batch), desc="generate", unit="batch"):
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               tokenize=False) for p in prompts[i:i + batch]]
        enc = tokenizer(chats, return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=eos)
        for row, mask in zip(gen, enc["attention_mask"]):
            ids = row[int((mask == 0).sum()):].tolist()
            n_prompt = int(mask.sum())
            reply = ids[n_prompt:]
            if eos in reply:
                reply = reply[:reply.index(eos) + 1]
            out.append((ids[:n_prompt] + reply, n_prompt))
    return out


@torch.inference_mode()
def teacher_pass(model, sequences: list[list[int]], prompt_lens: list[int]) -> Sequences:
    """fp32 hidden states and argmax labels for every position of every sequence."""
    data = Sequences([], [], [], [])
    for ids, n_prompt in tqdm(list(zip(sequences, prompt_lens)), desc="teacher", unit="seq"):
        x = torch.tensor([ids], device=model.device)
        out = model(x, output_hidden_states=True)
        data.tokens.append(x[0].cpu())
        data.hidden.append(out.hidden_states[-1][0].to(torch.float16).cpu())
        data.labels.append(out.logits[0].argmax(-1).cpu())
        data.reply_start.append(n_prompt)
    return data


def anchors(data: Sequences, depth: int) -> list[tuple[int, int]]:
    """(sequence, t) pairs: t from the last prompt position while t + depth fits."""
    return [(s, t) for s, toks in enumerate(data.tokens)
            for t in range(data.reply_start[s] - 1, len(toks) - 1 - depth)]


def batch_tensors(data: Sequences, picks: list[tuple[int, int]], depth: int):
    """H_t [B,H], tokens x_{t+1..t+depth} [B,depth], labels A_{t+1..t+depth}, targets H_{t+1..}."""
    h0 = torch.stack([data.hidden[s][t] for s, t in picks]).float()
    toks = torch.stack([data.tokens[s][t + 1:t + 1 + depth] for s, t in picks])
    labels = torch.stack([data.labels[s][t + 1:t + 1 + depth] for s, t in picks])
    feats = torch.stack([data.hidden[s][t + 1:t + 1 + depth] for s, t in picks]).float()
    return h0, toks, labels, feats


def chain_losses(head: MTPHead, embed: torch.Tensor, rows: torch.Tensor, remap: torch.Tensor,
                 h0, toks, labels, feats, feature_weight: float = 0.1):
    """Summed loss over draft positions, and per-position accuracy."""
    f, loss, accs = h0, 0.0, []
    for j in range(toks.shape[1]):
        f = head.step(f, embed[toks[:, j]])
        logits = head.logits(f, rows)
        target = remap[labels[:, j]]
        loss = loss + F.cross_entropy(logits, target, ignore_index=-1) * (0.8 ** j)
        loss = loss + feature_weight * F.smooth_l1_loss(f, feats[:, j])
        accs.append((logits.argmax(-1) == target).float().mean().item())
    return loss, accs


def train_drafter(cfg: Config, prompts: int = 600, max_new: int = 96, steps: int = 1500,
                  batch: int = 256, depth: int = 4, layers: int = 1, vocab: int = 8192,
                  device: str = "cpu", out: str = "", gen_batch: int = 32, seed: int = 0) -> dict:
    """Generate data, train, save; returns a summary."""
    from voice.decode_bench import bundled_prompts

    torch.manual_seed(seed)
    t_start = time.perf_counter()
    path = llm_path(cfg.models)
    model, tokenizer = load_causal_lm(path, device, torch.bfloat16)  # generation only
    texts = training_prompts(prompts, set(bundled_prompts()), seed)
    generated = generate_replies(model, tokenizer, texts, max_new, gen_batch)
    seqs, prompt_lens = [g[0] for g in generated], [g[1] for g in generated]
    t_gen = time.perf_counter() - t_start
    model = model.to(torch_dtype("float32"))
    data = teacher_pass(model, seqs, prompt_lens)
    embed = model.get_input_embeddings().weight.detach().float()
    counts = torch.bincount(torch.cat(data.labels), minlength=embed.shape[0])
    vocab_ids = counts.argsort(descending=True)[:vocab]
    vocab_ids = vocab_ids[counts[vocab_ids] > 0].sort().values
    remap = torch.full((embed.shape[0],), -1, dtype=torch.long)
    remap[vocab_ids] = torch.arange(len(vocab_ids))
    mcfg = MTPConfig(hidden_size=embed.shape[1], intermediate_size=model.config.intermediate_size,
                     layers=layers, vocab_ids=tuple(vocab_ids.tolist()), rms_norm_eps=model.config.rms_norm_eps,
                     target=str(cfg.models.llm))
    head = MTPHead(mcfg).to(device)
    rows = embed[vocab_ids].to(device)
    embed_d, remap_d = embed.to(device), remap.to(device)
    pool = anchors(data, depth)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="train", unit="step")
    ema = None
    for step in bar:
        picks = rng.sample(pool, min(batch, len(pool)))
        tensors = [x.to(device) for x in batch_tensors(data, picks, depth)]
        loss, accs = chain_losses(head, embed_d, rows, remap_d, *tensors)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = accs if ema is None else [0.95 * e + 0.05 * a for e, a in zip(ema, accs)]
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.2f}", acc="/".join(f"{a:.2f}" for a in ema))
    out_dir = Path(out or Path(__file__).resolve().parent.parent / "decode" / "assets" / "mtp-smollm2-135m")
    save_mtp(head.cpu(), out_dir)
    summary = {"prompts": prompts, "sequences": len(seqs), "reply_tokens": sum(len(s) - p for s, p in zip(seqs, prompt_lens)),
               "anchors": len(pool), "vocab": len(vocab_ids), "steps": steps, "batch": batch, "depth": depth,
               "layers": layers, "device": device, "generate_s": round(t_gen, 1),
               "total_s": round(time.perf_counter() - t_start, 1),
               "held_in_accuracy_per_position": [round(a, 3) for a in ema], "out": str(out_dir)}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    return summary
