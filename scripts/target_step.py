"""Whole static-target steps of SmolLM2-135M per variant (weight format, layout, fusion, compile):
ms per step of width 1, 5 and 16 after a cached context, median of interleaved reps, and each
variant's next-token agreement with fp32, teacher-forced in 16-token steps on the bundled held-out
conversations (positions inside assistant turns, which are fp32 greedy replies).

    python scripts/target_step.py [--threads 2] [--reps 9] [--variants fp32,bf16,...]

Prints one JSON line per variant, then one with the CPU, torch and flags (docs/target-step.md).
Variants: fp32 / fp32-wm (torch's layout / weight-major, fused QKV and gate/up as served),
fp32-unfused (q, k, v, gate and up as five products), bf16 / bf16-wm, int8 (weight-only per channel
through `aten._weight_int8pack_mm`, LM head too) and int8-body (LM head fp32), int4-gG[-body]
(`aten._weight_int4pack_mm_for_cpu`, groups of G, rows cast to bf16; -body: LM head fp32) and
int4f-gG[-body] (fp32 rows into that kernel). A suffix "+static" runs `decode.graphs`' static-shape
step eagerly, "+compile" / "+compile-frozen" under torch.compile (inductor; build_s includes it).
`--consistency N` also compares 5- and 16-token steps' argmax with 1-token steps' on N conversations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import decode.graphs as graphs_mod  # noqa: E402
import decode.target as target_mod  # noqa: E402
from commands.prompt_sets import bundled_conversations  # noqa: E402
from decode.blocks import BlockWeight  # noqa: E402
from decode.layers import project as plain_project  # noqa: E402
from decode.target import StaticLlamaTarget  # noqa: E402

WIDTHS = (1, 5, 16)


class Int8Weight:
    """Symmetric per-output-channel int8 weight for `aten._weight_int8pack_mm`."""

    def __init__(self, w: torch.Tensor) -> None:
        scale = w.float().abs().amax(1).clamp(min=1e-12) / 127
        self.q = (w.float() / scale[:, None]).round().clamp(-128, 127).to(torch.int8).contiguous()
        self.scale = scale.to(w.dtype)
        self.shape = w.shape

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)


class Int4Weight:
    """Asymmetric int4 weight in groups along K for `aten._weight_int4pack_mm_for_cpu`."""

    def __init__(self, w: torch.Tensor, group: int = 64, fp32_rows: bool = False) -> None:
        n, k = w.shape
        wf = w.float().reshape(n, k // group, group)
        lo, hi = wf.amin(-1, keepdim=True), wf.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = ((wf - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        zero = lo + 8 * scale  # aten dequantises (q - 8) * scale + zero
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.sz = torch.cat([scale, zero], -1).reshape(n, k // group, 2).transpose(0, 1).contiguous().to(torch.bfloat16)
        self.group, self.shape = group, w.shape
        if fp32_rows:  # rows stay fp32 into the kernel (its output then does not depend on the row count)
            self.sz = self.sz.float()
            self.mm = lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, group, self.sz)

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), self.packed, self.group, self.sz).to(x.dtype)


class SplitWeight:
    """A fused weight run as its parts' separate products, concatenated (the unfused layout)."""

    def __init__(self, w: torch.Tensor, sizes: list[int]) -> None:
        self.parts, self.shape = [p.contiguous() for p in w.split(sizes)], w.shape

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.linear(x, p) for p in self.parts], dim=-1)


def project(x: torch.Tensor, weight, weight_major: bool = True) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return plain_project(x, weight, weight_major)
    if isinstance(weight, BlockWeight):  # the served blocks (`decode.blocks`)
        return weight.apply(x)
    return weight.mm(x)


target_mod.project = project  # the variants' weights go through the same call sites
graphs_mod.project = project


def requant(target: StaticLlamaTarget, make, head: bool) -> StaticLlamaTarget:
    target.layers = [(ln1, make(wq), make(wo), ln2, make(wgu), make(wd)) for ln1, wq, wo, ln2, wgu, wd in target.layers]
    if head:
        target.lm_head = make(target.lm_head)
    return target


def build(name: str, model, model_bf16, max_len: int) -> tuple[StaticLlamaTarget, float]:
    """The variant's target and its build seconds (quantising; "+compile" compiles on first steps)."""
    start = time.perf_counter()
    base, _, extra = name.partition("+")
    if base.startswith("bf16"):
        t = StaticLlamaTarget(model_bf16, max_len=max_len, weight_major=base == "bf16-wm")
    else:
        t = StaticLlamaTarget(model, max_len=max_len, weight_major=base == "fp32-wm")
    if base == "fp32-unfused":
        hd, nh, nkv = t.head_dim, t.n_heads, t.n_kv
        inter = t.layers[0][4].shape[0] // 2
        t.layers = [
            (ln1, SplitWeight(wq, [nh * hd, nkv * hd, nkv * hd]), wo, ln2, SplitWeight(wgu, [inter, inter]), wd)
            for ln1, wq, wo, ln2, wgu, wd in t.layers
        ]
    elif base == "blocks":  # what `decode.block_weights` serves: the GGUF's own Q4_1/Q8_0 blocks, fp32 sums
        t.use_blocks()
    elif base in ("int8", "int8-body"):
        requant(t, Int8Weight, head=base == "int8")
    elif base.startswith("int4"):  # int4-g64, int4-g32-body (LM head left fp32), int4f-…: fp32 rows in
        group = int(base.split("-")[1][1:])
        fp32_rows = base.startswith("int4f")
        requant(t, lambda w: Int4Weight(w, group, fp32_rows), head=not base.endswith("body"))
    if extra == "static":  # decode.graphs' static-shape step, eager
        graphs_mod.StepGraphs(t, list(WIDTHS), capture=False)
    if extra.startswith("compile"):
        torch._inductor.config.freezing = extra == "compile-frozen"
        g = graphs_mod.StepGraphs(t, list(WIDTHS), capture=False)
        # inference_mode tensors cannot pass through AOT functionalisation: compile the undecorated step
        step = torch.compile(graphs_mod.StepGraphs._static_step.__wrapped__, dynamic=False)
        g._static_step = torch.no_grad()(lambda *a, g=g: step(g, *a))
    return t, time.perf_counter() - start


def step_ms(t: StaticLlamaTarget, width: int, base: int, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        t.forward([100 + i for i in range(width)])
        out.append((time.perf_counter() - start) * 1000)
        t.rollback(base)
    return out


def conversation_ids(tokenizer) -> list[tuple[list[int], list[bool]]]:
    """Each held-out conversation's ids and, per position, whether its next token is an assistant's."""
    out = []
    for messages in bundled_conversations():
        ids, scored = [], []
        for i in range(len(messages)):
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            new = tokenizer(upto, add_special_tokens=False)["input_ids"][len(ids) :]
            ids += new
            scored += [messages[i]["role"] == "assistant"] * len(new)
        out.append((ids, scored[1:] + [False]))  # position p predicts token p + 1
    return out


@torch.inference_mode()
def argmaxes(t: StaticLlamaTarget, ids: list[int], chunk: int = 16) -> torch.Tensor:
    t.reset()
    out = []
    for i in range(0, len(ids), chunk):
        out.append(t.forward(ids[i : i + chunk]).logits.argmax(-1))
    return torch.cat(out)


def agreement(t, convs: list, ref: list, against: str) -> dict:
    """Share of scored positions whose argmax equals the reference variant's."""
    same = total = 0
    for (ids, scored), want in zip(convs, ref):
        mask = torch.tensor(scored)
        got = argmaxes(t, ids)
        same += int((got == want)[mask].sum())
        total += int(mask.sum())
    return {"agreement_vs_" + against: round(same / total, 4), "positions": total}


def consistency(t, convs: list) -> dict:
    """Share of positions where 5- and 16-token steps pick what 1-token steps pick."""
    same, total = {5: 0, 16: 0}, 0
    for ids, scored in convs:
        mask = torch.tensor(scored)
        one = argmaxes(t, ids, chunk=1)[mask]
        total += len(one)
        for w in same:
            same[w] += int((argmaxes(t, ids, chunk=w)[mask] == one).sum())
    return {"same_as_1_token_steps": {w: round(v / total, 4) for w, v in same.items()}, "consistency_positions": total}


def machine(args: argparse.Namespace) -> dict:
    """The CPU, its vector flags and the run's settings."""
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return {
        "cpu": cpu,
        "threads": args.threads,
        "torch": torch.__version__,
        "context": args.context,
        "reps": args.reps,
        "flags": [f for f in flags if f.startswith(("avx512", "amx", "avx2", "avx_vnni"))],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--context", type=int, default=100)
    parser.add_argument("--variants", default="fp32,fp32-wm,fp32-unfused,bf16,bf16-wm,int8,int8-body,int4-g64")
    parser.add_argument("--widths", default="1,5,16")
    parser.add_argument("--agreement", type=int, default=24, help="conversations scored (0: none)")
    parser.add_argument(
        "--consistency", type=int, default=0, help="conversations where 1-token and 5-/16-token steps are compared"
    )
    parser.add_argument("--model", default=str(Path.home() / ".cache/voice/smollm2-135m-instruct"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global WIDTHS
    WIDTHS = tuple(int(w) for w in args.widths.split(","))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    model_bf16 = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    names = args.variants.split(",")
    targets, build_s = {}, {}
    context = list(range(1000, 1000 + args.context))
    for name in names:
        targets[name], build_s[name] = build(name, model, model_bf16, 1024)
        start = time.perf_counter()
        targets[name].forward(context)
        for w in WIDTHS:  # warm-up (compiles the static steps)
            step_ms(targets[name], w, args.context, 2)
        build_s[name] += time.perf_counter() - start
        print(f"built {name} in {build_s[name]:.1f} s", file=sys.stderr, flush=True)
    times = {n: {w: [] for w in WIDTHS} for n in names}
    for _ in range(args.reps):  # interleaved, so a slow moment of the machine hits every variant
        for name, t in targets.items():
            for w in WIDTHS:
                times[name][w] += step_ms(t, w, args.context, 1)
    convs = conversation_ids(tok)[: args.agreement]
    ref = [argmaxes(targets[names[0]], ids) for ids, _ in convs] if convs else []
    for name, t in targets.items():
        row = {
            "variant": name,
            "ms": {w: round(statistics.median(v), 1) for w, v in times[name].items()},
            "build_s": round(build_s[name], 1),
        }
        if convs:
            row.update(agreement(t, convs, ref, names[0]))
        if args.consistency:  # a verify of k + 1 tokens must pick what k + 1 one-token steps pick
            row.update(consistency(t, conversation_ids(tok)[: args.consistency]))
        print(json.dumps(row), flush=True)
    print(json.dumps(machine(args)))


if __name__ == "__main__":
    main()
