"""`voice decode-bench`: speculative decoding against plain greedy, fixed k, and transformers.

In: config, prompt count, max new tokens, prompt set (single bundled questions, or with
`conversation` the bundled held-out multi-turn conversations, as the live pipeline builds
its prompts: `llm.system_prompt` if set, 1-3 earlier turns, a new question), and with `tree`
draft-tree shapes. Out: a JSON-able report (keys documented in the decoder issue): per mode
tokens/s, ms to the first 8 tokens, acceptance (overall and per draft position), mean accepted
per target forward, mean k (draft tokens, a tree's nodes), the share of verifies that were
trees, and token identity with plain greedy (per prompt, the first position that differs: in
bf16 a speculative run may leave greedy, in fp32 it must not); plus the verify-cost curve.
Runs every mode on the same prompts in one process after a warm-up.
"""

from __future__ import annotations

import json
import logging
import time
from importlib.resources import files
from typing import Callable

import torch
from tqdm import tqdm

from commands.cli_args import UsageError
from commands.decode_runs import FIXED_KS, against_greedy, identity_guaranteed, rounded, run_ours, speedups
from commands.machine import machine_info
from commands.prompt_sets import bundled_conversations
from decode.controller import FixedController
from decode.drafters import NoDrafter, can_branch
from decode.jobs import ReplyJob
from decode.scheduler import Ticket
from decode.speculative import calibrate_verify_cost
from voice.config import Config
from voice.llm import ReplyModel, make_controller

log = logging.getLogger(__name__)

COST_KS = [0, 1, 2, 3, 4, 6, 8, 12, 16]
TREE_SHAPES = "3x2x2,4x2x3,6x3x3,8x4x4"  # --tree without a value: nodes x levels x candidates a node


def bundled_prompts() -> list[str]:
    """The bundled voice-assistant prompts."""
    return json.loads(files("commands").joinpath("data/prompts.json").read_text())


def bench_prompt_ids(llm: ReplyModel, n_prompts: int, conversation: bool = False) -> list[list[int]]:
    """Token ids of the first `n_prompts` bundled questions, or of the bundled conversations."""
    if conversation:
        return [llm.chat_ids(messages) for messages in bundled_conversations()[: max(1, n_prompts)]]
    return [llm.chat_ids([{"role": "user", "content": t}]) for t in bundled_prompts()[: max(1, n_prompts)]]


def _run_hf(llm: ReplyModel, prompts: list[list[int]], kwargs: dict) -> dict:
    outputs, total_s, tokens = [], 0.0, 0
    device = llm.model.device
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = llm.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=llm.settings.max_new_tokens,
                eos_token_id=list(llm.settings.eos_ids),
                pad_token_id=llm.tokenizer.eos_token_id,
                **kwargs,
            )
        total_s += time.perf_counter() - t0
        new = out[0, len(ids) :].tolist()
        for i, t in enumerate(new):
            if t in llm.settings.eos_ids:
                new = new[:i]
                break
        outputs.append(new)
        tokens += len(new)
    return {
        "tokens_per_s": tokens / total_s,
        "ms_to_first_8_tokens": None,
        "acceptance": None,
        "mean_accepted": None,
        "mean_k": None,
        "tokens": tokens,
        "_outputs": outputs,
    }


def _submit(llm: ReplyModel, ids: list[int], on_tokens: Callable[[tuple[int, ...]], None]) -> Ticket:
    """A reply to prompt token ids on the model's scheduler: its tokens go to `on_tokens`."""
    return llm.scheduler.submit(
        lambda dec: ReplyJob(dec, ids, llm.settings), ids, lambda span: on_tokens(span.token_ids)
    )


def _run_batch(llm: ReplyModel, prompts: list[list[int]], size: int, reference: list[list[int]]) -> dict:
    """The prompts through the step scheduler with `size` replies in flight: the next one starts
    as soon as one ends, like `size` clients that always have a question.

    tokens_per_s: all tokens / wall time; per_sequence_tokens_per_s: mean of each reply's tokens /
    its own time from submit to done; identical: every reply equals its own plain greedy.
    """
    sched = llm.scheduler
    sched.reset_slots()  # no prompt may find its prefill cached by an earlier size
    outputs: list[list[int]] = [[] for _ in prompts]
    flying: dict[int, tuple[object, float]] = {}
    per_seq, tokens, nxt, before = [], 0, 0, sched.stats.steps
    t_all = time.perf_counter()
    while nxt < len(prompts) or flying:
        while nxt < len(prompts) and len(flying) < size:
            flying[nxt] = (_submit(llm, prompts[nxt], outputs[nxt].extend), time.perf_counter())
            nxt += 1
        for i, (ticket, t0) in list(flying.items()):
            if ticket.finished.is_set():
                job = ticket.wait()
                per_seq.append(job.stats.tokens / max(ticket.finished_t - t0, 1e-9))
                tokens += job.stats.tokens
                del flying[i]
        time.sleep(0.002)
    wall = time.perf_counter() - t_all
    return {
        "size": size,
        "tokens_per_s": round(tokens / wall, 2),
        "per_sequence_tokens_per_s": round(sum(per_seq) / len(per_seq), 2),
        "steps": sched.stats.steps - before,
        "tokens": tokens,
        "identical": outputs == reference,
    }


def run_decode_bench(
    cfg: Config,
    n_prompts: int,
    max_new_tokens: int,
    drafter: str | None = None,
    progress: bool = True,
    batch: list[int] | None = None,
    batch_only: bool = False,
    conversation: bool = False,
    trees: list[tuple[int, int, int]] | None = None,
) -> dict:
    """Run every mode on the same prompts; return the report.

    `conversation`: the bundled multi-turn conversations instead of single questions.
    `batch`: also run the prompts through the step scheduler `size` at a time, for each size;
    `batch_only`: of the single-sequence modes run only greedy (the reference).
    `trees`: (nodes, levels, candidates a node) of fixed draft trees to run, and the adaptive controller
    with trees (`adaptive_tree`, the widest candidates given) and with chains only (`adaptive_chain`).
    """
    from dataclasses import replace

    cfg = replace(
        cfg,
        llm=replace(cfg.llm, max_new_tokens=max_new_tokens),
        decode=replace(cfg.decode, drafter=drafter or cfg.decode.drafter),
    )
    if trees and max(n for n, _, _ in trees) > cfg.decode.max_draft:
        raise UsageError(
            f"--tree: a tree of {max(n for n, _, _ in trees)} nodes needs decode.max_draft >= that "
            f"(now {cfg.decode.max_draft}; the verify widths calibrated and captured stop there): "
            "--set decode.max_draft=N"
        )
    llm = ReplyModel(cfg)
    prompts = bench_prompt_ids(llm, n_prompts, conversation)
    run_ours(llm.decoder, llm.settings, prompts[:2], NoDrafter(), FixedController(0))  # warm-up
    costs = calibrate_verify_cost(llm.target, COST_KS, reps=5)
    modes = _bench_modes(cfg, llm, batch_only, trees or [])
    runs, greedy_out = _run_modes(cfg, llm, prompts, modes, costs, progress)
    report = {
        "machine": machine_info(),
        "target": llm.cfg.models.llm,
        "drafter": llm.drafter.name,
        "device": cfg.llm.device,
        "linear_layout": getattr(llm.target, "layout", None),
        "cuda_graphs": bool(getattr(llm.target, "step_graphs", None)),
        "draft_graphs": getattr(llm.drafter, "graphs", None) is not None,  # the MTP draft loop replays graphs
        "dtype": cfg.llm.dtype,
        "tree_branch": llm.tree_branch,  # candidates a node the configured controller plans with (1: chains)
        "trees_possible": can_branch(llm.drafter, llm.target),  # the drafter branches, the target verifies trees
        "token_identity_guaranteed": identity_guaranteed(cfg.llm.dtype),
        "threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "prompt_set": "conversation" if conversation else "single",
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts), 1),
        "max_new_tokens": max_new_tokens,
        "runs": runs,
        "speedup": speedups(runs),
        "verify_cost_ms": {str(k): round(v * 1e3, 2) for k, v in costs.items()},
    }
    if trees:
        report["tree_drafts"] = tree_draft_check(llm, prompts, greedy_out, trees)
    if batch:
        report["batch"] = [
            _run_batch(llm, prompts, size, greedy_out)
            for size in tqdm(batch, desc="decode-bench batch", disable=not progress)
        ]
        _relative_to_batch_1(report["batch"])
        report["slots"] = len(llm.scheduler.slots)
    return report


def _bench_modes(
    cfg: Config, llm: ReplyModel, batch_only: bool, trees: list[tuple[int, int, int]]
) -> list[tuple[str, int | None, object]]:
    """(mode, k, extra) to run: greedy first (the reference), then fixed k, fixed trees (extra: levels and
    candidates a node), transformers, the controllers (the adaptive ones with trees: extra is the branch)."""
    modes: list[tuple[str, int | None, object]] = [("greedy", 0, None)]
    if batch_only:
        return modes
    modes += [("fixed", k, None) for k in FIXED_KS]
    modes += [("tree", nodes, (depth, branch)) for nodes, depth, branch in trees]
    hf_kwargs = _hf_assist_kwargs(cfg, llm)
    if hf_kwargs is not None:
        modes.append(("hf_assisted", hf_kwargs.get("prompt_lookup_num_tokens"), hf_kwargs))
    modes += [("heuristic", None, None), ("adaptive", None, llm.tree_branch)]
    if trees:
        modes += [("adaptive_chain", None, 1), ("adaptive_tree", None, max(b for _, _, b in trees))]
    return modes


def _run_modes(
    cfg: Config, llm: ReplyModel, prompts: list[list[int]], modes: list, costs: dict[int, float], progress: bool
) -> tuple[list[dict], list[list[int]]]:
    """Each mode's run over `prompts`, compared with the first (greedy); the runs and greedy's outputs."""
    runs, greedy_out = [], None
    for mode, k, extra in tqdm(modes, desc="decode-bench", disable=not progress):
        if mode == "hf_assisted":
            result = _run_hf(llm, prompts, extra)
        else:
            use_drafter = NoDrafter() if mode == "greedy" else llm.drafter
            if mode in ("greedy", "fixed"):
                controller = FixedController(k)
            elif mode == "tree":
                controller = FixedController(k, *extra)
            elif mode.startswith("adaptive"):
                controller = make_controller(cfg, costs, kind="adaptive", branch=extra)
            else:
                controller = make_controller(cfg, costs, kind=mode)
            result = run_ours(llm.decoder, llm.settings, prompts, use_drafter, controller)
        outputs = result.pop("_outputs")
        greedy_out = greedy_out or outputs
        shape = {"tree": list(extra)} if mode == "tree" else {"branch": extra} if mode.startswith("adaptive") else {}
        runs.append({"mode": mode, "k": k, **shape, **rounded(result), **against_greedy(outputs, greedy_out)})
    return runs, greedy_out


def tree_draft_check(
    llm: ReplyModel, prompts: list[list[int]], greedy_out: list[list[int]], trees: list[tuple[int, int, int]]
) -> dict | None:
    """Each fixed tree shape whose drafting replays a CUDA graph, drafted at 3 points of the first 4 prompts'
    greedy replies from the graph, from the same static code run eagerly, and grown level by level
    (`MTPDrafter.grown_tree`): how many drafts of each are the graph's tree (None: no tree graphs)."""
    from decode.tree import TreeShape

    drafter, dec = llm.drafter, llm.decoder
    graphs = getattr(drafter, "graphs", None)
    shapes = [(n, TreeShape(d, b)) for n, d, b in trees if graphs is not None and TreeShape(d, b) in graphs.trees]
    if not shapes:
        return None
    checked = eager_same = grown_same = 0
    for ids, out in zip(prompts[:4], greedy_out[:4]):
        for context in (ids + out[:j] for j in (0, len(out) // 3, 2 * len(out) // 3)):
            dec.prefill(context)
            for nodes, shape in shapes:
                tree = drafter.propose_tree(context, nodes, shape, dec.hidden)
                drafter.graphs = None
                eager = drafter.propose_tree(context, nodes, shape, dec.hidden)
                drafter.graphs = graphs
                with torch.inference_mode():
                    grown = drafter.grown_tree(context, nodes, shape, dec.hidden)
                checked += 1
                eager_same += (eager.tokens, eager.parents) == (tree.tokens, tree.parents)
                grown_same += (grown.tokens, grown.parents) == (tree.tokens, tree.parents)
    return {"checked": checked, "graph_equals_eager": eager_same, "graph_equals_grown": grown_same}


def _relative_to_batch_1(sizes: list[dict]) -> None:
    """Each batch size's aggregate tok/s over batch 1's (None when size 1 was not run first)."""
    base = sizes[0]["tokens_per_s"] if sizes[0]["size"] == 1 else None
    for row in sizes:
        row["vs_batch_1"] = round(row["tokens_per_s"] / base, 3) if base else None


def parse_probabilities(text: str) -> list[float]:
    """`0.8,0.7` -> [0.8, 0.7], each in [0, 1]."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise UsageError(f"--oracle-accept: expected comma-separated probabilities in [0, 1], got {text!r}")
    return values


def parse_tree_shapes(text: str) -> list[tuple[int, int, int]]:
    """`6x3x3,8x4x4` (or `default`) -> [(6, 3, 3), (8, 4, 4)]: nodes >= 1, 1 <= levels <= nodes, candidates >= 1."""
    try:
        shapes = [
            tuple(int(x) for x in part.split("x")) for part in (TREE_SHAPES if text == "default" else text).split(",")
        ]
    except ValueError:
        shapes = []
    if not shapes or not all(len(s) == 3 and 1 <= s[1] <= s[0] and s[2] >= 1 for s in shapes):
        raise UsageError(
            f"--tree: expected NODESxLEVELSxCANDIDATES,… with 1 <= LEVELS <= NODES (e.g. {TREE_SHAPES}), got {text!r}"
        )
    return shapes


def bench_from_args(args, cfg: Config) -> dict:
    """The report `voice decode-bench` asked for: the real target's, or with --synthetic CONFIG the random one's."""
    if args.synthetic:
        from commands.decode_bench_synthetic import ORACLE_ACCEPT, PROMPT_TOKENS, run_synthetic_bench

        if args.drafter or args.batch or args.conversation or args.tree:
            raise UsageError(
                "--synthetic drafts with an oracle on random prompts (chains only): "
                "drop --drafter, --batch, --conversation and --tree"
            )
        accept = parse_probabilities(args.oracle_accept) if args.oracle_accept else ORACLE_ACCEPT
        return run_synthetic_bench(
            cfg,
            args.synthetic,
            accept,
            args.prompts,
            args.max_new_tokens,
            args.prompt_tokens or PROMPT_TOKENS,
            progress=not args.json,
        )
    if args.oracle_accept or args.prompt_tokens:
        raise UsageError("--oracle-accept and --prompt-tokens go with --synthetic CONFIG")
    return run_decode_bench(
        cfg,
        args.prompts,
        args.max_new_tokens,
        drafter=args.drafter,
        progress=not args.json,
        batch=args.batch,
        batch_only=args.batch_only,
        conversation=args.conversation,
        trees=parse_tree_shapes(args.tree) if args.tree else None,
    )


def _hf_assist_kwargs(cfg: Config, llm: ReplyModel) -> dict | None:
    if llm.drafter.name == "ngram":
        return {"prompt_lookup_num_tokens": cfg.decode.fixed_draft}
    if llm.drafter.name == "model":
        return {"assistant_model": llm.drafter.hf_model}
    if llm.drafter.name == "assistant":  # transformers drives it with SinglePositionMultiTokenCandidateGenerator
        gen_cfg = llm.drafter.hf_model.generation_config
        gen_cfg.num_assistant_tokens = gen_cfg.num_assistant_tokens or cfg.decode.fixed_draft
        return {"assistant_model": llm.drafter.hf_model}
    return None


def print_table(report: dict) -> str:
    """A readable table of the report."""
    lines = [
        f"target={report['target']} drafter={report['drafter']} device={report['device']} "
        f"dtype={report['dtype']} prompts={report['prompts']} ({report['prompt_set']}, "
        f"{report['mean_prompt_tokens']} tokens on average) max_new_tokens={report['max_new_tokens']} "
        f"linear_layout={report.get('linear_layout')} cpu={report.get('machine', {}).get('cpu')}",
        f"{'mode':16s} {'k':>7s} {'tok/s':>7s} {'ms@8':>7s} {'accept':>7s} {'tok/step':>8s} "
        f"{'mean k':>6s} {'trees':>5s} identical (diverged prompts)",
    ]
    for r in report["runs"]:

        def f(key: str, spec: str, r: dict = r) -> str:
            return "-" if r.get(key) is None else format(r[key], spec)

        k = "-" if r["k"] is None else "x".join(map(str, [r["k"], *r["tree"]])) if "tree" in r else r["k"]
        mode = f"{r['mode']}(b{r['branch']})" if r.get("branch", 1) > 1 else r["mode"]
        lines.append(
            f"{mode:16s} {k:>7} {f('tokens_per_s', '7.1f')} "
            f"{f('ms_to_first_8_tokens', '7.1f')} {f('acceptance', '7.2f')} "
            f"{f('mean_accepted', '8.2f')} {f('mean_k', '6.2f')} {f('tree_steps', '5.2f')} {r['identical']} "
            f"({r.get('diverged_prompts', 0)}/{report['prompts']})"
        )
    lines += divergence_lines(report)
    lines.append("speedup: " + ", ".join(f"{k}={v}" for k, v in report["speedup"].items()))
    for row in report.get("batch", []):
        lines.append(
            f"batch {row['size']}: {row['tokens_per_s']:.1f} tok/s aggregate "
            f"({row['vs_batch_1']}x batch 1), {row['per_sequence_tokens_per_s']:.1f} per sequence, "
            f"identical={row['identical']}"
        )
    lines.append(
        "verify cost ms (k draft + 1): " + ", ".join(f"k={k}: {v}" for k, v in report["verify_cost_ms"].items())
    )
    if report.get("acceptance") == "synthetic":
        r = report
        lines.append(
            f"SYNTHETIC acceptance: an oracle right at draft position i with probability {r['oracle_accept']} "
            f"(expected tokens per step by k: {r['oracle_expected_tokens_per_step']}); "
            f"{r['parameters'] / 1e9:.2f}B random parameters; graph capture {r['graph_capture_s']} s; "
            f"eager verify ms: {r['step_ms']['eager']}"
        )
    return "\n".join(lines)


def divergence_lines(report: dict) -> list[str]:
    """Per prompt, the token position where each mode first left plain greedy ('-': identical); none
    when every run is identical. In fp32 any divergence is a bug; in bf16 it is rounding."""
    runs = [r for r in report["runs"] if r.get("first_divergence") is not None]
    if all(r["identical"] for r in runs):
        return []
    names = [f"{r['mode']}{'' if r['k'] is None else r['k']}" for r in runs]
    note = (
        "fp32: must not happen"
        if report.get("token_identity_guaranteed")
        else f"{report['dtype']}: no token-identity guarantee"
    )
    lines = [
        f"first position that differs from plain greedy ({note}):",
        "prompt " + " ".join(f"{n:>10s}" for n in names),
    ]
    for p in range(report["prompts"]):
        cells = ["-" if r["first_divergence"][p] is None else str(r["first_divergence"][p]) for r in runs]
        lines.append(f"{p:6d} " + " ".join(f"{c:>10s}" for c in cells))
    return lines
