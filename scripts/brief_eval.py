"""Factual-answer score of the reply policy with and without a brief-style system prompt.

Each question of scripts/data/factual.json is answered greedily by the configured LLM (the
speculative decoder, token-identical to greedy) under each system prompt; the answer is
cut as the pipeline would speak it (`voice.reply_policy.ReplyShaper` with the config's
`[reply]` budget and `llm.max_new_tokens`) and scores when the spoken text contains an
expected answer. Prints JSON: per prompt the score on the spoken and on the full reply,
mean spoken/decoded tokens and sentences, shortened replies, and replies not ending on a
sentence.

    .venv/bin/python scripts/brief_eval.py [--set llm.max_new_tokens=96] [--prompt TEXT ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voice.config import load_config  # noqa: E402
from voice.reply_policy import ReplyShaper, ends_sentence  # noqa: E402

DEFAULT_PROMPTS = [
    "",
    "Answer in one or two short sentences.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Answer in one or two short sentences.",
]


async def answer(llm, cfg, system_prompt: str, question: str) -> dict:
    """The greedy reply, as decoded and as the reply policy would speak it."""
    from voice.reply_turn import reply_budget

    llm.cfg = replace(cfg, llm=replace(cfg.llm, system_prompt=system_prompt))  # what chat_ids reads
    shaper = ReplyShaper(reply_budget(cfg))
    full, tokens = "", 0
    async for span in llm.reply([{"role": "user", "content": question}]):
        full += span.text
        tokens += len(span.token_ids)
        shaper.push(span.text, len(span.token_ids))
    shaper.finish(capped=tokens >= cfg.llm.max_new_tokens)
    return {
        "full": full.strip(),
        "spoken": shaper.spoken.strip(),
        "tokens": tokens,
        "spoken_tokens": len(llm.tokenizer(shaper.spoken.strip())["input_ids"]),
        "sentences": shaper.sentences,
        "end": shaper.end,
    }


async def evaluate(llm, cfg, prompts: list[str], questions: list[dict]) -> dict:
    out = {}
    for prompt in prompts:
        rows = []
        for item in questions:
            row = await answer(llm, cfg, prompt, item["q"])
            print(f"[{prompt[:20]!r}] {item['q']} -> {row['spoken']!r} ({row['end']})", file=sys.stderr, flush=True)
            hit = item["answers"]
            row.update(
                q=item["q"],
                spoken_ok=any(a in row["spoken"].lower() for a in hit),
                full_ok=any(a in row["full"].lower() for a in hit),
            )
            rows.append(row)
        out[prompt or "(template default)"] = {
            "score_spoken": sum(r["spoken_ok"] for r in rows),
            "score_full": sum(r["full_ok"] for r in rows),
            "of": len(rows),
            "spoken_tokens_mean": round(statistics.mean(r["spoken_tokens"] for r in rows), 1),
            "decoded_tokens_mean": round(statistics.mean(r["tokens"] for r in rows), 1),
            "sentences_mean": round(statistics.mean(r["sentences"] for r in rows), 2),
            "shortened": sum(r["end"] != "done" for r in rows),
            "not_ending_a_sentence": sum(not ends_sentence(r["spoken"]) for r in rows),
            "replies": rows,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--prompt", action="append", help="system prompts to compare ('' = the template's default)")
    ap.add_argument("--brief", action="store_true", help="per prompt, leave out the replies")
    args = ap.parse_args()
    cfg = load_config(None, args.set)
    from voice.llm import ReplyModel

    questions = json.loads((ROOT / "scripts/data/factual.json").read_text())["questions"]
    llm = ReplyModel(cfg)
    prompts = args.prompt if args.prompt is not None else DEFAULT_PROMPTS
    result = asyncio.run(evaluate(llm, cfg, prompts, questions))
    if args.brief:
        for v in result.values():
            v.pop("replies")
    print(
        json.dumps({"reply": cfg.reply.__dict__, "max_new_tokens": cfg.llm.max_new_tokens, "prompts": result}, indent=1)
    )
    llm.scheduler.close()


if __name__ == "__main__":
    main()
