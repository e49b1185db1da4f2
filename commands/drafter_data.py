"""The drafter's training data: the target's own replies to generated prompts and chats.

In: the target and its tokenizer, prompts from `commands.prompt_sets` (the decode-bench
prompts excluded, the held-out topics only in the held-out set) and, with `conversations`,
multi-turn chats planned like the live pipeline's. Out: (prompt + reply ids, prompt length)
per sequence, in a dict of "train", "held_out" and "held_out_conversations" lists, which
`cached_sequences` keeps as JSON so that a later run reuses it.
Cost: batched `generate` calls (bf16 for speed): the bulk of a `voice train-drafter` run's
generation time; a fraction of replies sampled at temperature 0.8 for more varied contexts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from commands.prompt_sets import (
    FOLLOW_UPS,
    HELD_OUT_TOPICS,
    SYSTEM_PROMPTS,
    TEMPLATES,
    TOPICS,
    conversation_openers,
    generate_turns,
    held_out_prompts,
    plan_conversations,
    training_prompts,
)


@torch.inference_mode()
def generate_replies(
    model,
    tokenizer,
    prompts: list[str] | list[list[dict[str, str]]],
    max_new_tokens: int,
    batch: int,
    sample: bool = False,
) -> list[tuple[list[int], int]]:
    """Batched replies (left padding), greedy or sampled (temperature 0.8, top-p 0.95), to user
    messages or whole chats. Returns (prompt + reply ids, prompt length) per prompt.
    """
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    how = dict(do_sample=True, temperature=0.8, top_p=0.95) if sample else dict(do_sample=False)
    out: list[tuple[list[int], int]] = []
    for i in tqdm(range(0, len(prompts), batch), desc="sample" if sample else "generate", unit="batch"):
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}] if isinstance(p, str) else p,
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts[i : i + batch]
        ]
        enc = tokenizer(chats, return_tensors="pt", padding=True).to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=eos, **how)
        for row, mask in zip(gen, enc["attention_mask"]):
            ids = row[int((mask == 0).sum()) :].tolist()
            n_prompt = int(mask.sum())
            reply = ids[n_prompt:]
            if eos in reply:
                reply = reply[: reply.index(eos) + 1]
            out.append((ids[:n_prompt] + reply, n_prompt))
    return out


def make_sequences(
    model,
    tokenizer,
    prompts: int,
    max_new_tokens: int,
    gen_batch: int,
    sampled: float,
    seed: int = 0,
    conversations: int = 0,
    system_prompt: str = "",
) -> dict:
    """Training and held-out sequences: a greedy reply per prompt plus `sampled` sampled ones per prompt;
    with `conversations`, as many multi-turn chats too (see `conversation_sequences`)."""
    from commands.decode_bench import bundled_prompts

    torch.manual_seed(seed)
    texts = training_prompts(prompts, set(bundled_prompts()), seed)
    extra = (texts * (int(sampled) + 1))[: round(sampled * len(texts))]
    train = generate_replies(model, tokenizer, texts, max_new_tokens, gen_batch)
    train += generate_replies(model, tokenizer, extra, max_new_tokens, gen_batch, sample=True)
    held = generate_replies(model, tokenizer, held_out_prompts(max(8, prompts // 50), seed), max_new_tokens, gen_batch)
    out = {"train": train, "held_out": held}
    if conversations:
        gen = lambda chats, sample=False: generate_replies(model, tokenizer, chats, max_new_tokens, gen_batch, sample)  # noqa: E731
        systems = SYSTEM_PROMPTS + [system_prompt] * (len(SYSTEM_PROMPTS) // 3 if system_prompt else 0)
        out["train"] += conversation_sequences(
            gen,
            tokenizer,
            conversation_openers(),
            TOPICS,
            conversations,
            sampled,
            seed,
            systems,
            frozenset(bundled_prompts()),
        )
        out["held_out_conversations"] = conversation_sequences(
            gen,
            tokenizer,
            TEMPLATES,
            HELD_OUT_TOPICS,
            max(8, conversations // 50),
            0,
            seed + 1,
            [system_prompt or None],
            final_only=True,
        )
    return out


def conversation_sequences(
    generate,
    tokenizer,
    openers: list[str],
    topics: list[str],
    n: int,
    sampled: float,
    seed: int,
    systems: list[str | None],
    exclude: frozenset[str] = frozenset(),
    final_only: bool = False,
) -> list[tuple[list[int], int]]:
    """n multi-turn chats: every earlier turn answered greedily (a sequence each, unless `final_only`),
    then the last user message answered greedily plus `sampled` sampled replies per chat.

    `generate(chats, sample=False) -> [(ids, prompt length)]`.
    """
    plans = plan_conversations(n, topics, openers, FOLLOW_UPS, seed, systems, exclude=exclude)
    earlier, chats = generate_turns(generate, tokenizer, plans)
    extra = (chats * (int(sampled) + 1))[: round(sampled * len(chats))]
    final = generate(chats) + (generate(extra, True) if extra else [])
    return final if final_only else earlier + final


def cached_sequences(path: str, make: Callable[[], dict]) -> dict:
    """The training sequences from `path` when it exists, else `make()` (saved to `path` if given)."""
    cached = Path(path) if path else None
    if cached and cached.is_file():
        return json.loads(cached.read_text())
    seqs = make()
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(seqs))
    return seqs
