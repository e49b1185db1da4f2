"""Fixed-width one-sequence steps of a `StaticLlamaTarget`, captured as CUDA graphs.

On a GPU an eager step of SmolLM2-135M is launch-bound: ~30 layers × ~45 kernels, each
launched from Python, cost about the same for any k. A CUDA graph replays the whole step
in one launch. Capture needs fixed shapes, so a step of width W (1 + k draft tokens) runs
over static buffers — token ids [W] and the start position (a 0-dim tensor) — writes its
keys/values with `index_copy_` at positions start..start+W-1, and attends over the first
`span` rows of the slot's cache under the causal mask `col <= start + row` instead of slicing
the cache to the current length. One graph is captured per (width, span), spans doubling from
128 to the cache's size, and a step replays the narrowest span that holds its last position,
so attention's cost follows the context, not the cache size (docs/gpu.md). Masked rows get
weight exactly 0, so the caches are zeroed once (garbage in `torch.empty` rows could be NaN, and 0 · NaN is NaN).

Attention is three kernels, not SDPA's math path (which a boolean mask with grouped KV heads
takes, a dozen kernels a layer): the query heads of a KV group are stacked as rows of one
matrix, `baddbmm` adds the additive mask (built once a step) to q·kᵀ/√d, then softmax and ·v.

With `trees=True` a step of width W also verifies a draft tree (`decode.tree`): two more
static buffers hold each row's depth [W] and its ancestors [W, W]; a row's rotary position is
start + depth, its keys/values are still written at start + row, and it sees the columns before
start and, among the W new ones, its ancestors. A chain fills them with 0..W−1 and the causal
triangle (copied only when the shape in them changes). Without `trees` the step is the chain's
alone, and a tree feed takes the eager path.

`StepGraphs(target, widths, slot)` captures the graphs for that slot (on CUDA; elsewhere, or
with `capture=False`, the same static-shape step runs eagerly — what the CPU tests check
against the target's own forward). `target.forward` then replays the graph of its width and
falls back to the eager path for other widths, prefill chunks and packed batches.
"""

from __future__ import annotations

import logging

import torch

from decode.layers import project
from decode.target import Forward, StaticLlamaTarget
from decode.tree import TreeShape, ancestor_mask, depths

log = logging.getLogger(__name__)

FIRST_SPAN = 128  # the narrowest cache span a step attends over; spans double up to max_len


def cache_spans(max_len: int, first: int = FIRST_SPAN) -> list[int]:
    """The cache spans steps are captured for: first, 2·first, … below max_len, then max_len."""
    spans, span = [], first
    while span < max_len:
        spans.append(span)
        span *= 2
    return spans + [max_len]


def capture_graphs(calls: dict, pool=None) -> dict:
    """{key: (graph, outputs)}: each call warmed up once on a side stream (as torch.cuda.graphs asks),
    then captured as its own CUDA graph (sharing `pool` if given)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls.values():
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graphs = {}
    for key, call in calls.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = call()
        graphs[key] = (graph, out)
    return graphs


class StepGraphs:
    """Steps of `widths` tokens on one slot of `target`, as CUDA graphs where possible."""

    def __init__(
        self, target: StaticLlamaTarget, widths: list[int], slot: int = 0, capture: bool = True, trees: bool = False
    ) -> None:
        target.slot(slot)  # allocates the slot's cache if new
        if target.lengths[slot] != 0:
            raise ValueError("capture step graphs before the slot holds any context")
        self.target, self.slot = target, slot
        dev = target.device
        self._rows = torch.arange(max(widths), device=dev)
        self._cols = torch.arange(target.max_len, device=dev)
        target._k[slot].zero_()
        target._v[slot].zero_()
        self.spans = cache_spans(target.max_len)
        self.buffers = {
            w: (torch.zeros(w, dtype=torch.long, device=dev), torch.zeros((), dtype=torch.long, device=dev))
            for w in sorted(set(widths))
        }
        self.trees = trees
        # per width: each row's depth and its ancestors (trees), and the parents they now hold
        self.shapes = {
            w: (self._rows[:w].clone(), torch.ones(w, w, dtype=torch.bool, device=dev).tril()) for w in self.buffers
        }
        self._shape_of: dict[int, tuple | None] = dict.fromkeys(self.buffers)
        self.steps: dict[tuple[int, int], tuple] = {(w, s): (None, None) for w in self.buffers for s in self.spans}
        self.captured = False
        if capture and dev.type == "cuda":
            self._capture()
        target.step_graphs[slot] = self

    def _visible(self, start: torch.Tensor, width: int, span: int) -> torch.Tensor:
        """[W, span] bool: the columns each row attends to (graph-safe)."""
        if not self.trees:
            return self._cols[None, :span] <= start + self._rows[:width, None]
        ancestors = self.shapes[width][1]
        rel = self._cols[:span] - start  # column - start: < 0 is the context, 0..W-1 the new rows
        new = ancestors[:, rel.clamp(0, width - 1)] & (rel >= 0) & (rel < width)
        return new | (rel < 0)

    @torch.inference_mode()
    def _static_step(self, ids: torch.Tensor, start: torch.Tensor, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [W, V] and features [W, F] of a step over the static buffers, attending over the
        cache's first `span` rows (graph-safe)."""
        t, slot, width = self.target, self.slot, ids.shape[0]
        positions = start + self._rows[:width]  # where the keys/values go
        rotary = start + self.shapes[width][0] if self.trees else positions
        group, scale = t.n_heads // t.n_kv, t.head_dim**-0.5
        visible = self._visible(start, width, span)  # [W, span]
        bias = torch.zeros(visible.shape, dtype=t.embed.dtype, device=visible.device).masked_fill_(~visible, -torch.inf)
        bias = bias.repeat(group, 1).expand(t.n_kv, group * width, span)  # rows: each query head's W rows

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = t._k[slot][layer], t._v[slot][layer]
            k_cache.index_copy_(1, positions, k)
            v_cache.index_copy_(1, positions, v)
            q = q.reshape(t.n_kv, group * width, t.head_dim)  # query head h reads KV head h // group
            scores = torch.baddbmm(bias, q, k_cache[:, :span].transpose(1, 2), alpha=scale)
            weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
            return torch.bmm(weights, v_cache[:, :span]).view(t.n_heads, width, t.head_dim)

        hidden, features = t.run_layers(t.embed[ids], t.cos[rotary], t.sin[rotary], attend)
        return project(hidden, t.lm_head, t.weight_major).float(), features

    def _capture(self) -> None:
        """One graph per (width, span), warmed up on a side stream first as torch.cuda.graphs asks;
        the graphs share one memory pool (replays never overlap and `run` copies the outputs out)."""
        calls = {(w, s): lambda w=w, s=s: self._static_step(*self.buffers[w], s) for w, s in self.steps}
        self.steps = capture_graphs(calls, pool=torch.cuda.graph_pool_handle())
        self.captured = True
        log.info("captured CUDA graphs for steps of %s tokens over cache spans %s", sorted(self.buffers), self.spans)

    def _set_shape(self, width: int, parents: list[int] | None) -> None:
        """Fill the width's depth and ancestor buffers with the tree `parents` (None: a chain)."""
        shape = None if parents is None else tuple(parents)
        if self._shape_of[width] == shape:
            return
        depth, ancestors = self.shapes[width]
        if parents is None:
            depth.copy_(self._rows[:width])
            ancestors.copy_(torch.ones(width, width, dtype=torch.bool).tril())
        else:
            depth.copy_(torch.tensor(depths(parents)))
            ancestors.copy_(ancestor_mask(parents))
        self._shape_of[width] = shape

    def run(self, token_ids: list[int], parents: list[int] | None = None) -> Forward | None:
        """The step of `token_ids` (a tree: `parents`) on this slot if a static step of that width
        exists, else None."""
        t, slot, width = self.target, self.slot, len(token_ids)
        end = t.lengths[slot] + width
        if width not in self.buffers or end > t.max_len or (parents is not None and not self.trees):
            return None
        span = next(s for s in self.spans if s >= end)
        (graph, out), (ids, start) = self.steps[width, span], self.buffers[width]
        if self.trees:
            self._set_shape(width, parents)
        ids.copy_(torch.tensor(token_ids, dtype=torch.long))
        start.fill_(t.lengths[slot])
        if graph is not None:
            graph.replay()
            logits, features = out[0].clone(), out[1].clone()  # the next replay overwrites them
            # return when the outputs are ready, as an eager forward does: the decoder times the forward
            # as the step's verify cost, and a launch-only time (a fraction of the step) made the
            # adaptive controller see verifying as nearly free next to drafting and choose k = 0. The caller
            # reads the logits right away, so waiting here costs nothing.
            torch.cuda.current_stream().synchronize()
        else:
            logits, features = self._static_step(ids, start, span)
        t.lengths[slot] += width
        return Forward(logits, features)


class DraftGraphs:
    """An MTP head's greedy draft loop of k steps, one CUDA graph per k, and its draft trees, one graph per
    (levels, candidates a node) (`MTPDrafter.capture`).

    Eagerly each draft token costs ~40 small kernels and two host syncs (the argmax read back to
    index the next embedding), a sizeable share of a graph-replayed target step (docs/gpu.md). In
    a graph the chosen token stays on the device (`vocab_ids[argmax]` indexes the next
    embedding), so k tokens are one replay and one read-back. A tree is `MTPDrafter.tree_table`
    (`decode.tree.grow_tree_static`: the frontier chosen on the device, the node budget a static
    0-dim buffer), so a whole tree is one replay and one read-back of its [3, n] table too. Only
    greedy heads without context attention are captured; sampling and context heads draft eagerly.
    """

    def __init__(self, drafter, ks: list[int], trees: list[TreeShape] = ()):
        head, dev, dtype = drafter.head, drafter.head_rows.device, drafter.head_rows.dtype
        width = head.cfg.hidden_size * (1 + len(head.cfg.feature_layers))
        self.head, self.embed, self.head_rows, self.vocab_ids = (
            head,
            drafter.embed,
            drafter.head_rows,
            drafter.vocab_ids,
        )
        self.hidden = torch.zeros(width, dtype=dtype, device=dev)
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.nodes = torch.zeros((), dtype=torch.long, device=dev)
        self.steps: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = capture_graphs(
            {k: lambda k=k: self._loop(k) for k in sorted(set(ks))}
        )
        log.info("captured CUDA graphs for MTP drafts of %s tokens", sorted(self.steps))
        tree_calls = {s: lambda s=s: drafter.tree_table(self.hidden, self.token, self.nodes, s) for s in set(trees)}
        self.trees: dict[TreeShape, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        try:  # one pool: tree replays never overlap and `run_tree` reads each table out at once
            self.trees = capture_graphs(tree_calls, pool=torch.cuda.graph_pool_handle()) if tree_calls else {}
        except Exception as err:  # a kernel that cannot be captured: trees draft eagerly, the same trees
            log.warning("CUDA graph capture of draft trees failed, they draft eagerly: %s: %s", type(err).__name__, err)
        if self.trees:
            log.info("captured CUDA graphs for MTP draft trees (levels, candidates) %s", sorted(self.trees))

    @torch.inference_mode()
    def _loop(self, k: int) -> torch.Tensor:
        """Draft tokens [k] from the static hidden state and last token (graph-safe: no host reads)."""
        head, dtype = self.head, self.head_rows.dtype
        feature, token, tokens = head.start(self.hidden), self.token, []
        for _ in range(k):  # tokens stay [1]-shaped device tensors: index_select never reads them on the host
            feature = head.step(feature, self.embed.index_select(0, token)[0].to(dtype))
            token = self.vocab_ids.index_select(0, head.logits(feature, self.head_rows).float().argmax().view(1))
            tokens.append(token)
        return torch.cat(tokens)

    def run(self, hidden: torch.Tensor, last_token: int, k: int) -> list[int] | None:
        """k draft tokens after `last_token` given the target's `hidden` there; None if k was not captured."""
        step = self.steps.get(k)
        if step is None:
            return None
        self.hidden.copy_(hidden)
        self.token.fill_(last_token)
        step[0].replay()
        return step[1].tolist()

    def run_tree(self, hidden: torch.Tensor, last_token: int, nodes: int, shape: TreeShape) -> list | None:
        """The tree table (`MTPDrafter.tree_table`) of `nodes` kept after `last_token` given the target's
        `hidden` there, read to the host; None if `shape` was not captured."""
        step = self.trees.get(shape)
        if step is None:
            return None
        self.hidden.copy_(hidden)
        self.token.fill_(last_token)
        self.nodes.fill_(nodes)
        step[0].replay()
        return step[1].tolist()
