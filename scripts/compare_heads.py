"""Two or more MTP heads on the same greedy replies to decode-bench's prompts, teacher-forced (paired).

Live acceptance from `voice decode-bench` counts one draft per verify step (~20 per reply);
this scores every reply position instead, with each head drafting from the same target
features: the target's greedy reply (fp32, batched) to each bundled question and each bundled
conversation, one fp32 teacher pass, then acceptance per draft position (a later position
counts only if the earlier ones were accepted) — the figure `voice train-drafter` reports on
its held-out sets. Prints JSON per prompt set and head.

    python scripts/compare_heads.py --head decode/assets/mtp-smollm2-135m --head NEW [--prompts 24]
"""

from __future__ import annotations

import argparse
import json

import torch

from commands.decode_bench import bundled_prompts
from commands.prompt_sets import bundled_conversations
from commands.train_drafter import Sequences, acceptance, generate_replies, teacher_pass
from decode.mtp import load_mtp
from voice.config import load_config
from voice.llm import load_causal_lm
from voice.models import llm_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head", action="append", required=True, help="an MTP head folder (repeat)")
    p.add_argument("--prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args()
    cfg = load_config()
    model, tokenizer = load_causal_lm(llm_path(cfg.models), "cpu", torch.float32)
    heads = {path: load_mtp(path) for path in args.head}
    layers = tuple(sorted({layer for h in heads.values() for layer in h.cfg.feature_layers}))
    embed = model.get_input_embeddings().weight.detach().float()
    system = [{"role": "system", "content": cfg.llm.system_prompt}] if cfg.llm.system_prompt else []
    sets = {
        "single": [system + [{"role": "user", "content": t}] for t in bundled_prompts()[: args.prompts]],
        "conversation": [system + c for c in bundled_conversations()[: args.prompts]],
    }
    report = {}
    for name, chats in sets.items():
        seqs = generate_replies(model, tokenizer, chats, args.max_new_tokens, batch=8)
        data = teacher_pass(model, seqs, args.depth, layers, batch=8, prompt_context=0)
        report[name] = {"prompts": len(chats), "anchors": len(data.anchors)}
        for path, head in heads.items():
            columns = [0] + [1 + layers.index(layer) for layer in head.cfg.feature_layers]
            size = embed.shape[1]
            keep = torch.cat([torch.arange(c * size, (c + 1) * size) for c in columns])
            view = Sequences(data.tokens, data.features[:, keep], data.labels, data.anchors, data.starts)
            ids = torch.tensor(head.cfg.vocab_ids)
            remap = torch.full((embed.shape[0],), -1, dtype=torch.long)
            remap[ids] = torch.arange(len(ids))
            report[name][path] = acceptance(head, view, embed, embed[ids], remap, args.depth)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
