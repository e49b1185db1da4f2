"""Train several MTP head variants on one set of generated data (how the shipped head was made).

`voice train-drafter` runs one recipe end to end; this driver generates (or reuses) the
sequences once, runs one teacher-forced pass with every feature layer any variant reads,
and trains each variant on it, so variants compare on the same data. Used on the GPU
machine:

    python scripts/train_mtp_variants.py --target DIR --out OUT --prompts 9000 --sampled 2 \
        --steps 9000 --batch 1024 --gen-batch 768 --variant shipped:10,20:2:0

`--variant NAME:LAYERS:BLOCKS:CONTEXT` (LAYERS comma-separated or 'none'); each lands in
OUT/NAME with config.json, model.safetensors and training.json. `--sequences FILE.json.gz`
reuses (or writes) the generated sequences. `--conversations N` adds N multi-turn chats
(`make_sequences`) and a held-out conversation set; `--baseline DIR` first scores an
existing head on the same held-out sets (teacher-forced acceptance per position), so a new
head and the shipped one compare on identical data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from commands.drafter_data import make_sequences
from commands.train_drafter import Sequences, acceptance, fit, reduced_vocab, teacher_pass
from decode.mtp import MTPConfig, MTPHead, load_mtp, save_mtp
from voice.config import LLMConfig
from voice.llm import load_causal_lm


def parse_variant(text: str) -> tuple[str, tuple[int, ...], int, int]:
    """'name:10,20:2:0' → (name, (10, 20), 2, 0)."""
    name, layers, blocks, context = text.split(":")
    feature_layers = () if layers == "none" else tuple(int(x) for x in layers.split(","))
    return name, feature_layers, int(blocks), int(context)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="target model dir (transformers)")
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=9000)
    p.add_argument("--sampled", type=float, default=2.0)
    p.add_argument("--max-new-tokens", type=int, default=LLMConfig.max_new_tokens)
    p.add_argument("--gen-batch", type=int, default=768)
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sequences", help="generated sequences (.json.gz): reused if present, else written")
    p.add_argument("--conversations", type=int, default=0, help="multi-turn training chats besides the prompts")
    p.add_argument("--baseline", help="an existing head to score on the same held-out sets")
    p.add_argument("--variant", action="append", type=parse_variant, required=True)
    return p.parse_args()


def load_sequences(args: argparse.Namespace, model, tokenizer) -> dict:
    """The generated sequences from `--sequences` when that file exists, else generated now (and written there)."""
    if args.sequences and Path(args.sequences).is_file():
        return json.loads(gzip.open(args.sequences).read())
    seqs = make_sequences(
        model,
        tokenizer,
        args.prompts,
        args.max_new_tokens,
        args.gen_batch,
        args.sampled,
        conversations=args.conversations,
    )
    if args.sequences:
        with gzip.open(args.sequences, "wt") as f:
            f.write(json.dumps(seqs))
    return seqs


def feature_view(d: Sequences, all_layers: tuple[int, ...], layers: tuple[int, ...]) -> Sequences:
    """`d` (features: the last hidden state, then each of `all_layers`) with only the columns that a head
    reading `layers` sees."""
    size = d.features.shape[1] // (1 + len(all_layers))
    columns = [0] + [1 + all_layers.index(layer) for layer in layers]  # last hidden state first
    keep = torch.cat([torch.arange(c * size, (c + 1) * size) for c in columns]).to(d.features.device)
    return Sequences(d.tokens, d.features[:, keep], d.labels, d.anchors, d.starts)


def score_baseline(path: str, held: dict[str, Sequences], all_layers: tuple[int, ...], embed, depth: int) -> dict:
    """Teacher-forced acceptance per position of the existing head at `path` on each held-out set."""
    base = load_mtp(path).to(embed.device)
    ids = torch.tensor(base.cfg.vocab_ids)
    base_remap = torch.full((embed.shape[0],), -1, dtype=torch.long)
    base_remap[ids] = torch.arange(len(ids))
    rows, base_remap = embed[ids.to(embed.device)], base_remap.to(embed.device)
    return {
        name: acceptance(base, feature_view(h, all_layers, base.cfg.feature_layers), embed, rows, base_remap, depth)
        for name, h in held.items()
    }


def variant_summary(args: argparse.Namespace, variant: tuple, seqs: dict, data: Sequences, history, train_s: float):
    """OUT/NAME/training.json: the variant, the shared data and recipe, the training history."""
    name, layers, blocks, context = variant
    return {
        "variant": name,
        "feature_layers": list(layers),
        "layers": blocks,
        "context": context,
        "steps": args.steps,
        "batch": args.batch,
        "sequences": len(seqs["train"]),
        "prompts": args.prompts,
        "sampled_per_prompt": args.sampled,
        "conversations": args.conversations,
        "reply_tokens": sum(len(s) - n for s, n in seqs["train"]),
        "anchors": len(data.anchors),
        "train_s": round(train_s, 1),
        "history": history,
    }


def main() -> None:
    args = parse_args()
    out, depth = Path(args.out), 4
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(args.target, device, torch.bfloat16)
    seqs = load_sequences(args, model, tokenizer)
    print(f"generated {len(seqs['train'])} sequences in {time.perf_counter() - t0:.1f} s", flush=True)
    model = model.float()
    all_layers = tuple(sorted({layer for _, layers, _, _ in args.variant for layer in layers}))
    reach = max(context for _, _, _, context in args.variant)
    data = teacher_pass(model, seqs["train"], depth, all_layers, batch=64, prompt_context=reach)
    held = {
        name: teacher_pass(model, seqs[key], depth, all_layers, batch=64, prompt_context=reach)
        for name, key in (("held_out", "held_out"), ("held_out_conversation", "held_out_conversations"))
        if key in seqs
    }
    print(f"teacher pass done at {time.perf_counter() - t0:.1f} s: {len(data.anchors)} anchors", flush=True)
    embed = model.get_input_embeddings().weight.detach().float()
    if args.baseline:
        scores = score_baseline(args.baseline, held, all_layers, embed, depth)
        print("baseline", args.baseline, json.dumps(scores), flush=True)
        (out / "baseline.json").parent.mkdir(parents=True, exist_ok=True)
        (out / "baseline.json").write_text(json.dumps({"head": args.baseline, **scores}, indent=2))
    vocab_ids, remap = reduced_vocab(data.labels, embed.shape[0], 8192)
    for name, layers, blocks, context in args.variant:
        cfg = MTPConfig(
            hidden_size=embed.shape[1],
            intermediate_size=model.config.intermediate_size,
            layers=blocks,
            vocab_ids=tuple(vocab_ids.tolist()),
            rms_norm_eps=model.config.rms_norm_eps,
            target="embedded (SmolLM2-135M-Instruct)",
            feature_layers=layers,
            context=context,
        )
        torch.manual_seed(0)
        head = MTPHead(cfg).to(device)
        t1 = time.perf_counter()
        history = fit(
            head,
            feature_view(data, all_layers, layers),
            {k: feature_view(h, all_layers, layers) for k, h in held.items()},
            embed,
            embed[vocab_ids],
            remap.to(device),
            args.steps,
            args.batch,
            depth,
            args.lr,
        )
        save_mtp(head.cpu(), out / name)
        summary = variant_summary(args, (name, layers, blocks, context), seqs, data, history, time.perf_counter() - t1)
        (out / name / "training.json").write_text(json.dumps(summary, indent=2))
        print(name, json.dumps(history[-1]), flush=True)


if __name__ == "__main__":
    main()
