"""Fixed-width one-sequence steps of a `StaticLlamaTarget`, captured as CUDA graphs.

On a GPU an eager step of SmolLM2-135M is launch-bound: ~30 layers × ~15 kernels, each
launched from Python, cost the same 16–24 ms for any k. A CUDA graph replays the whole step
in one launch. Capture needs fixed shapes, so a step of width W (1 + k draft tokens) runs
over static buffers — token ids [W] and the start position (a 0-dim tensor) — writes its
keys/values with `index_copy_` at positions start..start+W-1, and attends over the slot's
*whole* cache [max_len] under the causal mask `col <= start + row` instead of slicing the
cache to the current length. Masked rows get weight exactly 0, so the caches are zeroed
once (garbage in `torch.empty` rows could be NaN, and 0 · NaN is NaN).

`StepGraphs(target, widths, slot)` captures one graph per width for that slot (on CUDA; elsewhere, or with
`capture=False`, the same static-shape step runs eagerly — what the CPU tests check against
the target's own forward). `target.forward` then replays the graph of its width and falls
back to the eager path for other widths, prefill chunks and packed batches.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from decode.target import Forward, StaticLlamaTarget, project

log = logging.getLogger(__name__)


class StepGraphs:
    """Steps of `widths` tokens on one slot of `target`, as CUDA graphs where possible."""

    def __init__(self, target: StaticLlamaTarget, widths: list[int], slot: int = 0, capture: bool = True) -> None:
        target.slot(slot)  # allocates the slot's cache if new
        if target.lengths[slot] != 0:
            raise ValueError("capture step graphs before the slot holds any context")
        self.target, self.slot = target, slot
        dev = target.device
        self._rows = torch.arange(max(widths), device=dev)
        self._cols = torch.arange(target.max_len, device=dev)
        target._k[slot].zero_()
        target._v[slot].zero_()
        self.steps: dict[int, tuple] = {}
        for width in sorted(set(widths)):
            ids = torch.zeros(width, dtype=torch.long, device=dev)
            start = torch.zeros((), dtype=torch.long, device=dev)
            self.steps[width] = (None, ids, start, None)
        self.captured = False
        if capture and dev.type == "cuda":
            self._capture()
        target.step_graphs[slot] = self

    @torch.inference_mode()
    def _static_step(self, ids: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [W, V] and features [W, F] of a step over the static buffers (graph-safe)."""
        t, slot = self.target, self.slot
        positions = start + self._rows[: ids.shape[0]]
        mask = self._cols[None, :] <= positions[:, None]  # [W, max_len]

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            k_cache, v_cache = t._k[slot][layer], t._v[slot][layer]
            k_cache.index_copy_(1, positions, k)
            v_cache.index_copy_(1, positions, v)
            return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=t.n_heads != t.n_kv)

        hidden, features = t.run_layers(t.embed[ids], t.cos[positions], t.sin[positions], attend)
        return project(hidden, t.lm_head, t.weight_major).float(), features

    def _capture(self) -> None:
        """One graph per width (warmed up on a side stream first, as torch.cuda.graphs asks)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _, ids, start, _ in self.steps.values():
                for _ in range(2):
                    self._static_step(ids, start)
        torch.cuda.current_stream().wait_stream(stream)
        for width, (_, ids, start, _) in list(self.steps.items()):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._static_step(ids, start)
            self.steps[width] = (graph, ids, start, out)
        self.captured = True
        log.info("captured CUDA graphs for steps of %s tokens", sorted(self.steps))

    def run(self, token_ids: list[int]) -> Forward | None:
        """The step of `token_ids` on this slot if a static step of that width exists, else None."""
        step, t, slot = self.steps.get(len(token_ids)), self.target, self.slot
        if step is None or t.lengths[slot] + len(token_ids) > t.max_len:
            return None
        graph, ids, start, out = step
        ids.copy_(torch.tensor(token_ids, dtype=torch.long))
        start.fill_(t.lengths[slot])
        if graph is not None:
            graph.replay()
            logits, features = out[0].clone(), out[1].clone()  # the next replay overwrites them
        else:
            logits, features = self._static_step(ids, start)
        t.lengths[slot] += len(token_ids)
        return Forward(logits, features)
