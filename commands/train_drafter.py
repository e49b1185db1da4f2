"""`voice train-drafter`: self-distil an MTP drafter from the target alone.

In: the target LLM, prompts from `commands.prompt_sets` (templates × topics / tasks / places;
the decode-bench prompts are excluded, and a set of topics is held out entirely for
validation) and, with `conversations`, multi-turn chats built like the live pipeline's (1-3
earlier turns answered by the target itself, sometimes a system turn), steps, device. Out: a
`decode.mtp` head saved as fp16 safetensors + config.json + training.json, with held-out
acceptance (single prompts, and conversations when trained on them) printed as it trains.

Data: the target's own batched replies (`commands.drafter_data`: bf16 for speed; a fraction
sampled at temperature 0.8 so that contexts are more varied than greedy alone), then one teacher-forced fp32 pass
over each whole sequence for its hidden states H_t (plus the residual stream at the
head's `feature_layers`) and argmax labels A_t — exactly what verification will compare
against. Training: for anchor t, f_1 = step(start(H_t), E[x_{t+1}]) predicts A_{t+1};
f_j = step(f_{j-1}, E[x_{t+j}]) predicts A_{t+j} for j ≤ depth (teacher forcing: a later
draft only counts if the earlier ones were accepted), cross-entropy over the reduced
vocabulary plus a small feature loss f_j ≈ H_{t+j}.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from commands.drafter_data import (
    cached_sequences,
    generate_replies as generate_replies,  # scripts import it from here
    make_sequences,
)
from decode.mtp import DEFAULT_PATH, MTPConfig, MTPHead, save_mtp
from decode.target import check_feature_layers
from voice.config import Config, ConfigError, LLMConfig
from voice.llm import load_causal_lm, torch_dtype
from voice.models import llm_path

log = logging.getLogger(__name__)


@dataclass
class Sequences:
    """Token sequences flattened end to end, with the target's features and argmax labels."""

    tokens: torch.Tensor  # [N]
    features: torch.Tensor  # [N, F] fp16: last hidden state, then the feature layers
    labels: torch.Tensor  # [N] the target's argmax after each position
    anchors: torch.Tensor  # [M] positions t (last prompt token onward) with t + depth in the same sequence
    starts: torch.Tensor  # [N] where each position's sequence starts (context windows stop there)


@torch.inference_mode()
def teacher_pass(
    model,
    sequences: list[tuple[list[int], int]],
    depth: int,
    feature_layers: tuple[int, ...] = (),
    batch: int = 16,
    prompt_context: int | None = None,
) -> Sequences:
    """fp32 features and argmax labels (batched by length, right padding), in input order.

    Every position is kept, or with `prompt_context` only the reply's and the `prompt_context`
    prompt positions before the last prompt token's (no anchor reads further back; long
    multi-turn prompts would otherwise fill the GPU).
    """
    parts: list[tuple | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    for i in tqdm(range(0, len(order), batch), desc="teacher", unit="batch"):
        group = order[i : i + batch]
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
            ids, n_prompt = sequences[j]
            keep = slice(_first_kept(n_prompt, prompt_context), len(ids))
            parts[j] = (x[r, keep], f[r, keep].clone(), a[r, keep])  # a copy: the padded batch is freed
    anchors, starts, offset = [], [], 0
    for ids, n_prompt in sequences:
        first = _first_kept(n_prompt, prompt_context)
        anchors.append(torch.arange(n_prompt - 1 - first, len(ids) - first - depth) + offset)
        starts.append(torch.full((len(ids) - first,), offset))
        offset += len(ids) - first
    device = model.device
    tokens, feats, labels = (torch.cat(column) for column in zip(*parts))
    return Sequences(
        tokens.to(device), feats, labels.to(device), torch.cat(anchors).to(device), torch.cat(starts).to(device)
    )


def _first_kept(n_prompt: int, prompt_context: int | None) -> int:
    return 0 if prompt_context is None else max(0, n_prompt - 1 - prompt_context)


def batch_tensors(data: Sequences, picks: torch.Tensor, depth: int, hidden_size: int, context: int = 0):
    """Features at t [B,F], tokens x_{t+1..t+depth} [B,depth], labels A_{t+1..}, targets H_{t+1..},
    and with `context` the features at t-context+1..t [B,W,F] with their validity [B,W]."""
    ahead = picks[:, None] + 1 + torch.arange(depth, device=picks.device)
    out = (
        data.features[picks].float(),
        data.tokens[ahead],
        data.labels[ahead],
        data.features[ahead, :hidden_size].float(),
    )
    if not context:
        return out + (None, None)
    window = picks[:, None] - torch.arange(context - 1, -1, -1, device=picks.device)
    valid = window >= data.starts[picks][:, None]
    return out + (data.features[window.clamp(min=0)].float(), valid)


def chain_losses(
    head: MTPHead,
    embed: torch.Tensor,
    rows: torch.Tensor,
    remap: torch.Tensor,
    h0,
    toks,
    labels,
    feats,
    context=None,
    valid=None,
    feature_weight: float = 0.1,
):
    """Summed loss over draft positions, and per-position accuracy (as tensors)."""
    f, loss, hits = head.start(h0), 0.0, []
    kv = head.context_kv(context) if context is not None else None
    for j in range(toks.shape[1]):
        f = head.step(f, embed[toks[:, j]], kv, valid)
        logits = head.logits(f, rows)
        target = remap[labels[:, j]]
        loss = loss + F.cross_entropy(logits, target, ignore_index=-1) * (0.8**j)
        loss = loss + feature_weight * F.smooth_l1_loss(f, feats[:, j])
        hits.append((logits.argmax(-1) == target).float().mean())
    return loss, torch.stack(hits)


@torch.inference_mode()
def acceptance(head: MTPHead, data: Sequences, embed, rows, remap, depth: int, chunk: int = 4096) -> list[float]:
    """Greedy acceptance per draft position over every anchor (teacher-forced = earlier drafts accepted)."""
    head.eval()
    total, n = torch.zeros(depth, device=embed.device), 0
    for i in range(0, len(data.anchors), chunk):
        picks = data.anchors[i : i + chunk]
        _, hits = chain_losses(
            head, embed, rows, remap, *batch_tensors(data, picks, depth, head.cfg.hidden_size, head.cfg.context)
        )
        total += hits * len(picks)
        n += len(picks)
    head.train()
    return [round(float(v), 3) for v in total / max(n, 1)]


def fit(
    head: MTPHead,
    data: Sequences,
    held: Sequences | dict[str, Sequences],
    embed: torch.Tensor,
    rows: torch.Tensor,
    remap: torch.Tensor,
    steps: int,
    batch: int,
    depth: int,
    lr: float,
    evals: int = 5,
    seed: int = 0,
) -> list[dict]:
    """Train `head` in place (steps >= 10); returns acceptance per position at `evals` points on each
    held-out set (`held`: one set, reported as "held_out_acceptance", or {name: set} → "{name}_acceptance")."""
    held_sets = held if isinstance(held, dict) else {"held_out": held}
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
        loss, _ = chain_losses(
            head, embed, rows, remap, *batch_tensors(data, picks, depth, head.cfg.hidden_size, head.cfg.context)
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // evals) == 0 or step == steps - 1:
            point = {
                f"{name}_acceptance": acceptance(head, sequences, embed, rows, remap, depth)
                for name, sequences in held_sets.items()
            }
            history.append({"step": step + 1, **point})
            bar.write(f"step {step + 1}: loss {loss.item():.2f}, acceptance per position {point}")
    return history


def reduced_vocab(labels: torch.Tensor, vocab_size: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` most frequent label ids (sorted) and a full-vocabulary → reduced index map (-1: absent)."""
    counts = torch.bincount(labels.cpu(), minlength=vocab_size)
    ids = counts.argsort(descending=True)[:keep]
    ids = ids[counts[ids] > 0].sort().values
    remap = torch.full((vocab_size,), -1, dtype=torch.long)
    remap[ids] = torch.arange(len(ids))
    return ids, remap


@dataclass(frozen=True)
class DrafterTraining:
    """One `voice train-drafter` run: the data to generate, the head to train, how, and where it goes.

    `conversations`: multi-turn chats besides the single prompts (`make_sequences`).
    `feature_layers` None: a third and two thirds of the way up the target (EAGLE-3's low/mid/high idea).
    `sequences_file`: reuse the generated sequences from this JSON file (written if absent).
    """

    prompts: int = 600
    max_new_tokens: int = LLMConfig.max_new_tokens  # the longest reply the drafter will serve
    steps: int = 1500
    batch: int = 256
    depth: int = 4
    layers: int = 2  # residual MLP blocks: the shipped head's (training.json)
    vocab: int = 8192
    device: str = "cpu"
    out: str = ""
    gen_batch: int = 32
    seed: int = 0
    sampled: float = 0.5
    feature_layers: tuple[int, ...] | None = None
    lr: float = 1e-3
    sequences_file: str = ""
    context: int = 0
    conversations: int = 0


def train_drafter(cfg: Config, run: DrafterTraining) -> dict:
    """Generate data (or reuse `run.sequences_file`), train, save; returns a summary (also in training.json)."""
    if run.conversations < 0:
        raise ConfigError(f"--conversations must be at least 0, got {run.conversations}")
    torch.manual_seed(run.seed)
    t_start = time.perf_counter()
    model, tokenizer = load_causal_lm(llm_path(cfg.models), run.device, torch.bfloat16)  # generation only
    feature_layers = resolve_feature_layers(run.feature_layers, model.config.get_text_config().num_hidden_layers)
    seqs = cached_sequences(
        run.sequences_file,
        lambda m=model: make_sequences(
            m,
            tokenizer,
            run.prompts,
            run.max_new_tokens,
            run.gen_batch,
            run.sampled,
            run.seed,
            run.conversations,
            cfg.llm.system_prompt,
        ),
    )
    generate_s = time.perf_counter() - t_start
    model = model.to(torch_dtype("float32"))
    data = teacher_pass(model, seqs["train"], run.depth, feature_layers, prompt_context=run.context)
    held = {
        name: teacher_pass(model, seqs[key], run.depth, feature_layers, prompt_context=run.context)
        for name, key in (("held_out", "held_out"), ("held_out_conversation", "held_out_conversations"))
        if key in seqs
    }
    embed = model.get_input_embeddings().weight.detach().float()
    vocab_ids, remap = reduced_vocab(data.labels, embed.shape[0], run.vocab)
    mcfg = MTPConfig(
        hidden_size=embed.shape[1],
        intermediate_size=model.config.intermediate_size,
        layers=run.layers,
        vocab_ids=tuple(vocab_ids.tolist()),
        rms_norm_eps=model.config.rms_norm_eps,
        target=str(cfg.models.llm),
        feature_layers=feature_layers,
        context=run.context,
    )
    del model
    head = MTPHead(mcfg).to(run.device)
    rows, remap = embed[vocab_ids].to(run.device), remap.to(run.device)
    history = fit(head, data, held, embed, rows, remap, run.steps, run.batch, run.depth, run.lr, seed=run.seed)
    out_dir = Path(run.out or DEFAULT_PATH)
    save_mtp(head.cpu(), out_dir)
    summary = _summary(run, seqs, data, len(vocab_ids), mcfg, history, out_dir, generate_s, t_start)
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2))
    return summary


def resolve_feature_layers(feature_layers: tuple[int, ...] | None, n_layers: int) -> tuple[int, ...]:
    """The target layers the head reads, checked; None: a third and two thirds of the way up."""
    if feature_layers is None:
        feature_layers = tuple(sorted({round(n_layers / 3), round(2 * n_layers / 3)} - {0, n_layers}))
    try:
        return check_feature_layers(feature_layers, n_layers)
    except ValueError as err:
        raise ConfigError(f"--feature-layers: {err}") from None


def _summary(
    run: DrafterTraining,
    seqs: dict,
    data: Sequences,
    vocab: int,
    mcfg: MTPConfig,
    history: list[dict],
    out_dir: Path,
    generate_s: float,
    t_start: float,
) -> dict:
    """What `train_drafter` returns and writes as training.json: the data, the recipe, the timings, the history."""
    return {
        "sequences": len(seqs["train"]),
        "held_out_sequences": len(seqs["held_out"]),
        "prompts": run.prompts,
        "sampled_per_prompt": run.sampled,
        "max_new_tokens": run.max_new_tokens,
        "reply_tokens": sum(len(s) - p for s, p in seqs["train"]),
        "anchors": len(data.anchors),
        "vocab": vocab,
        "steps": run.steps,
        "batch": run.batch,
        "depth": run.depth,
        "layers": run.layers,
        "feature_layers": list(mcfg.feature_layers),
        "context": run.context,
        "lr": run.lr,
        "device": run.device,
        "generate_s": round(generate_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "conversations": run.conversations,
        "held_out_acceptance_per_position": history[-1]["held_out_acceptance"],
        "held_out_conversation_acceptance_per_position": history[-1].get("held_out_conversation_acceptance"),
        "history": history,
        "out": str(out_dir),
    }
