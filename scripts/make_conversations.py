"""Write `commands/data/conversations.json`: the held-out multi-turn set of `voice decode-bench --conversation`.

Plans 24 conversations (`commands.prompt_sets.bench_plans`: held-out topics, 1-3 earlier
turns) and fills every earlier assistant turn with the target's own greedy reply (fp32,
`--max-new-tokens` as the pipeline's `llm.max_new_tokens`), text stripped as the pipeline
stores it. The file is written once and bundled, so the bench is the same on every machine.

    python scripts/make_conversations.py --target DIR [--device cuda] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from commands.drafter_data import generate_replies
from commands.prompt_sets import bench_plans, generate_turns
from voice.config import LLMConfig
from voice.llm import load_causal_lm

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "commands" / "data" / "conversations.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="target model dir (transformers)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-new-tokens", type=int, default=LLMConfig.max_new_tokens)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args()
    model, tokenizer = load_causal_lm(args.target, args.device, torch.float32)
    plans = bench_plans()
    _, chats = generate_turns(
        lambda c: generate_replies(model, tokenizer, c, args.max_new_tokens, len(c)), tokenizer, plans
    )
    data = {
        "about": "held-out conversations for `voice decode-bench --conversation`: earlier assistant turns "
        f"are the target's greedy replies (fp32, {args.max_new_tokens} new tokens at most), made by "
        "scripts/make_conversations.py; each ends with the user message to answer",
        "target": "SmolLM2-135M-Instruct (embedded)",
        "conversations": chats,
    }
    Path(args.out).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(chats)} conversations to {args.out}")


if __name__ == "__main__":
    main()
