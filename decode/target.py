"""The target model behind one interface: feed tokens, get logits and hidden states, roll back.

In: token ids appended at the current position. Out: `Forward(logits [n, V], hidden [n, F])`
for those positions; the KV cache grows by n. `rollback(length)` forgets everything past
`length` (rejected draft tokens). `hidden` is the last hidden state (after the final norm),
followed by the residual stream after each layer in `feature_layers` (a drafter that reads
several depths, as EAGLE-3 does, sets them; F = H * (1 + len(feature_layers))).

A target with `trees` also verifies a draft tree in one forward (`forward(ids, parents)`: each
token at position start + its depth, attending to the context and its ancestors, `decode.tree`)
and then keeps only the accepted path's cache rows (`keep_rows`).

Here: `StaticLlamaTarget`, Llama-family models (SmolLM2, tiny test configs) re-implemented in
plain torch over a pre-allocated KV cache indexed by explicit positions (gpt-fast's design):
rollback only moves the write position, and one step has no `generate()` or cache-object
overhead (its speed against eager transformers: docs/target-step.md). Any other transformers
causal LM runs through `decode.hf_target.HFTarget`.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F

from decode.blocks import block_weight, load_kernel
from decode.layers import project, rms_norm, rotate_half
from decode.tree import ancestor_mask, check_parents, depths


class Forward(NamedTuple):
    """Target outputs for the positions just fed."""

    logits: torch.Tensor  # [n, V] float32
    hidden: torch.Tensor  # [n, H] last hidden state (after the final norm), then any feature layers


class Target(Protocol):
    """A causal LM with a rollback-able KV cache."""

    length: int
    vocab_size: int
    feature_layers: tuple[int, ...]
    max_len: int  # positions the cache holds (a reply stops before it would overflow)
    embed: torch.Tensor  # the input embedding table [vocab, hidden] (drafters that share it read it)
    trees: bool  # forward takes `parents` (a draft tree) and keep_rows exists

    def forward(self, token_ids: list[int], parents: list[int] | None = None) -> Forward: ...

    def rollback(self, length: int) -> None: ...

    def reset(self) -> None: ...


class StaticLlamaTarget:
    """A Llama-family causal LM over a static KV cache; rollback is moving `length` back."""

    trees = True

    def __init__(
        self, model, max_len: int = 2048, feature_layers: tuple[int, ...] = (), weight_major: bool = True
    ) -> None:
        cfg = model.config
        if not static_supported(cfg):
            raise ValueError(f"StaticLlamaTarget does not support {cfg.model_type}; use HFTarget")
        inner = model.model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        self.max_len = max_len
        self.weight_major = weight_major  # see `project`
        self.step_graphs: dict = {}  # slot → its fixed-width steps (`decode.graphs.StepGraphs`)
        self.embed = inner.embed_tokens.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.final_norm = inner.norm.weight.detach()
        self.layers = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach(),
                    att.o_proj.weight.detach(),
                    layer.post_attention_layernorm.weight.detach(),
                    torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                    mlp.down_proj.weight.detach(),
                )
            )
        self._k: list[torch.Tensor] = []  # per slot [layers, n_kv, max_len, head_dim], allocated on first use
        self._v: list[torch.Tensor] = []
        self.lengths: list[int] = []
        # the model's own rotary frequencies: transformers applies the config's rope type (Llama 3's
        # low-frequency scaling, yarn, …) and its attention scaling; length-dependent types are refused
        rotary = inner.rotary_emb
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rotary.inv_freq.detach().float().cpu())
        emb, scale = torch.cat((freqs, freqs), dim=-1), rotary.attention_scaling
        self.cos, self.sin = (
            (emb.cos() * scale).to(self.device, self.dtype),
            (emb.sin() * scale).to(self.device, self.dtype),
        )
        self.feature_layers = check_feature_layers(feature_layers, len(self.layers))
        self._ensure_slot(0)

    def use_blocks(self) -> int:
        """Hold each weight that is exactly 4- or 8-bit blocks as such (`decode.blocks`; CPU only):
        the same weights, a third of the memory traffic. Returns how many weights changed."""
        if self.device.type != "cpu" or self.dtype != torch.float32 or (kernel := load_kernel()) is None:
            return 0
        changed = 0
        for i, (ln1, w_qkv, w_o, ln2, w_gu, w_down) in enumerate(self.layers):
            held = [
                block_weight(w, kernel) if isinstance(w, torch.Tensor) else None for w in (w_qkv, w_o, w_gu, w_down)
            ]
            changed += sum(b is not None for b in held)
            w_qkv, w_o, w_gu, w_down = (b or w for b, w in zip(held, (w_qkv, w_o, w_gu, w_down)))
            self.layers[i] = (ln1, w_qkv, w_o, ln2, w_gu, w_down)
        if isinstance(self.lm_head, torch.Tensor) and (head := block_weight(self.lm_head, kernel)) is not None:
            self.lm_head, changed = head, changed + 1
        return changed

    @property
    def layout(self) -> str:
        """The name of `project`'s layout in use: "weight_major" or "linear"."""
        return "weight_major" if self.weight_major else "linear"

    def choose_layout(self, widths: tuple[int, ...] = (3, 8), rounds: int = 3, context: int = 64) -> dict[str, float]:
        """Time steps of `widths` tokens (slot 0, after `context` tokens) with each layout of `project`,
        interleaved, and keep the faster: seconds per layout (best round, summed over widths).

        Which one wins is the CPU's BLAS (figures per CPU in docs/decoding.md).
        """
        saved = self.lengths[0]
        base = max(saved, min(context, self.max_len - max(widths) - 1))
        if base > saved:
            self.forward([0] * (base - saved))
        best = {"linear": float("inf"), "weight_major": float("inf")}
        for i in range(rounds + 1):
            for name in best:
                self.weight_major = name == "weight_major"
                start = time.perf_counter()
                for w in widths:
                    self.forward([0] * w)
                    self.rollback(base)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # round 0 warms both layouts up
                    best[name] = min(best[name], time.perf_counter() - start)
        self.weight_major = best["weight_major"] < best["linear"]
        self.rollback(saved)
        return best

    def _ensure_slot(self, index: int) -> None:
        shape = (len(self.layers), self.n_kv, self.max_len, self.head_dim)
        while len(self._k) <= index:
            # empty, not zeros: only written rows are read, and untouched pages cost no memory
            self._k.append(torch.empty(shape, device=self.device, dtype=self.dtype))
            self._v.append(torch.empty(shape, device=self.device, dtype=self.dtype))
            self.lengths.append(0)

    def slot(self, index: int) -> SlotTarget:
        """Sequence slot `index` (its own KV cache, allocated now) as a one-sequence `Target`."""
        self._ensure_slot(index)
        return SlotTarget(self, index)

    @property
    def length(self) -> int:
        """Slot 0's length: the target used as one sequence."""
        return self.lengths[0]

    def reset(self) -> None:
        """Forget slot 0's whole context."""
        self.lengths[0] = 0

    def rollback(self, length: int, slot: int = 0) -> None:
        """Forget positions >= length of `slot` (no copy: later writes overwrite them)."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"cannot roll back to {length} from {self.lengths[slot]}")
        self.lengths[slot] = length

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Slot `dst` now holds slot `src`'s first `n` positions (their keys and values, copied)."""
        if not 0 <= n <= self.lengths[src]:
            raise ValueError(f"slot {src} holds {self.lengths[src]} positions, not {n}")
        self._k[dst][:, :, :n].copy_(self._k[src][:, :, :n])
        self._v[dst][:, :, :n].copy_(self._v[src][:, :, :n])
        self.lengths[dst] = n

    def forward(self, token_ids: list[int], parents: list[int] | None = None) -> Forward:
        """Run the model on `token_ids` at slot 0's positions length..length+n-1 (a tree: `parents`)."""
        return self.forward_packed([(0, token_ids, False, parents)])[0]

    def keep_rows(self, start: int, rows: list[int], slot: int = 0) -> None:
        """After a tree fed at `start`: cache row start + rows[j] moves to start + j (the accepted path,
        root first, rows ascending) and the cache ends there. A path along rows 0, 1, … moves nothing."""
        end = start + len(rows)
        if not rows or rows[0] != 0 or start + rows[-1] >= self.lengths[slot]:
            raise ValueError(f"rows {rows} are not a path fed at {start} (cache length {self.lengths[slot]})")
        if rows != list(range(len(rows))):
            src = torch.tensor(rows, device=self.device) + start
            for cache in (self._k[slot], self._v[slot]):  # [layers, n_kv, max_len, head_dim]
                cache[:, :, start:end] = cache[:, :, src]
        self.rollback(end, slot)

    @torch.inference_mode()
    def _pack(self, feeds: list[tuple]) -> tuple[list, torch.Tensor, torch.Tensor, list]:
        """Each feed's (slot, start, n, offset in the packed tokens), the rotary tables at every
        packed position, and each feed's mask over its cache (None for one token): causal for a
        chain, the context plus its ancestors for a tree token (`decode.tree`)."""
        parts, trees, offset = [], [], 0
        for feed in feeds:
            slot, ids, parents = feed[0], feed[1], feed[3] if len(feed) > 3 else None
            start, n = self.lengths[slot], len(ids)
            if n == 0:
                raise ValueError(f"slot {slot}: nothing to feed")
            if start + n > self.max_len:
                raise ValueError(f"context of {start + n} tokens exceeds the cache ({self.max_len})")
            if parents is not None:
                if len(parents) != n - 1:
                    raise ValueError(f"slot {slot}: {len(parents)} parents for a tree of {n - 1} tokens")
                check_parents(parents)
            parts.append((slot, start, n, offset))
            trees.append(parents)
            offset += n
        if len(parts) == 1 and trees[0] is None:
            start, n = parts[0][1], parts[0][2]
            cos, sin = self.cos[start : start + n], self.sin[start : start + n]
        else:
            pos = torch.cat(
                [
                    torch.arange(start, start + n) if tree is None else start + torch.tensor(depths(tree))
                    for (_, start, n, _), tree in zip(parts, trees)
                ]
            ).to(self.device)
            cos, sin = self.cos[pos], self.sin[pos]
        masks = [
            None
            if n == 1
            else torch.ones(n, start + n, dtype=torch.bool, device=self.device).tril(start)
            if tree is None
            else torch.cat([torch.ones(n, start, dtype=torch.bool), ancestor_mask(tree)], dim=1).to(self.device)
            for (_, start, n, _), tree in zip(parts, trees)
        ]
        return parts, cos, sin, masks

    def _attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, parts: list, masks: list
    ) -> torch.Tensor:
        """Layer `layer`'s attention, per slot: write each feed's keys/values into its slot's cache,
        attend its queries over that cache; the outputs packed again ([heads, T, head_dim])."""
        outs = []
        for (slot, start, n, off), mask in zip(parts, masks):
            end = start + n
            k_cache, v_cache = self._k[slot][layer], self._v[slot][layer]
            k_cache[:, start:end] = k[:, off : off + n]
            v_cache[:, start:end] = v[:, off : off + n]
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, off : off + n],
                    k_cache[:, :end],
                    v_cache[:, :end],
                    attn_mask=mask,
                    enable_gqa=self.n_heads != self.n_kv,
                )
            )
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def run_layers(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder layers over packed rows x [T, H] with their rotary tables; `attend(layer, q, k,
        v)` stores the keys/values and returns the attention output [heads, T, head_dim]. Returns the
        final-normed hidden state [T, H] and it followed by the `feature_layers` residuals [T, F]."""
        total = x.shape[0]
        hd, nh, nkv = self.head_dim, self.n_heads, self.n_kv
        major = self.weight_major
        features = []
        for i, (ln1, w_qkv, w_o, ln2, w_gu, w_down) in enumerate(self.layers):
            h = rms_norm(x, ln1, self.eps)
            q, k, v = project(h, w_qkv, major).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = q.view(total, nh, hd).transpose(0, 1)
            k = k.view(total, nkv, hd).transpose(0, 1)
            v = v.view(total, nkv, hd).transpose(0, 1)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            att = attend(i, q, k, v)
            x = x + project(att.transpose(0, 1).reshape(total, nh * hd), w_o, major)
            gate, up = project(rms_norm(x, ln2, self.eps), w_gu, major).chunk(2, dim=-1)
            x = x + project(F.silu(gate) * up, w_down, major)
            if i + 1 in self.feature_layers:
                features.append(x)
        hidden = rms_norm(x, self.final_norm, self.eps)
        return hidden, (torch.cat([hidden, *features], dim=-1) if features else hidden)

    def forward_packed(self, feeds: list[tuple]) -> list[Forward]:
        """One forward over several slots' new tokens, packed end to end (no padding).

        feeds: (slot, token ids, last_only[, parents]) — `last_only` returns the logits of the last
        position only (a prefill chunk); `parents` (None: a chain) makes the ids a draft tree after
        their first. The linear layers run once over all T = sum(n_i) tokens; attention runs per slot
        over its own cache (query j of slot i sees keys 0..start_i + j, or for a tree the context and
        its ancestors). One feed is exactly the one-sequence forward.
        """
        if len(feeds) == 1 and not feeds[0][2] and (graphs := self.step_graphs.get(feeds[0][0])) is not None:
            done = graphs.run(feeds[0][1], feeds[0][3] if len(feeds[0]) > 3 else None)  # a captured step
            if done is not None:
                return [done]
        parts, cos, sin, masks = self._pack(feeds)
        major = self.weight_major
        x = self.embed[torch.tensor([t for feed in feeds for t in feed[1]], device=self.device)]  # [T, H]
        hidden, hidden_out = self.run_layers(x, cos, sin, lambda i, q, k, v: self._attend(i, q, k, v, parts, masks))
        rows = [off + n - 1 if feed[2] else slice(off, off + n) for (_, _, n, off), feed in zip(parts, feeds)]
        if any(feed[2] for feed in feeds):  # the LM head only where logits are read
            logits = [
                project(hidden[r : r + 1] if isinstance(r, int) else hidden[r], self.lm_head, major).float()
                for r in rows
            ]
        else:
            logits = list(project(hidden, self.lm_head, major).float().split([n for _, _, n, _ in parts]))
        for slot, start, n, _ in parts:
            self.lengths[slot] = start + n
        return [Forward(lg, hidden_out[off : off + n]) for lg, (_, _, n, off) in zip(logits, parts)]


class SlotTarget:
    """One slot of a `StaticLlamaTarget` behind the one-sequence `Target` interface."""

    def __init__(self, parent: StaticLlamaTarget, index: int) -> None:
        self.parent, self.index = parent, index

    def __getattr__(self, name: str):  # vocab_size, feature_layers, max_len, embed, …
        return getattr(self.parent, name)

    @property
    def length(self) -> int:
        return self.parent.lengths[self.index]

    def forward(self, token_ids: list[int], parents: list[int] | None = None) -> Forward:
        return self.parent.forward_packed([(self.index, token_ids, False, parents)])[0]

    def keep_rows(self, start: int, rows: list[int]) -> None:
        self.parent.keep_rows(start, rows, self.index)

    def rollback(self, length: int) -> None:
        self.parent.rollback(length, self.index)

    def reset(self) -> None:
        self.parent.lengths[self.index] = 0

    def copy_prefix_from(self, other: SlotTarget, n: int) -> bool:
        """Take `other`'s first `n` cached positions (a copy, no forward); False if `other` is a
        slot of another target."""
        if not isinstance(other, SlotTarget) or other.parent is not self.parent:
            return False
        self.parent.copy_prefix(other.index, self.index, n)
        return True


def static_supported(cfg) -> bool:
    """Whether `StaticLlamaTarget` implements this architecture exactly."""
    rope_type = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    return (
        cfg.model_type in ("llama", "smollm3", "mistral", "qwen2")
        and not (getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False))
        and rope_type not in ("dynamic", "longrope")
    )  # frequencies that change with the sequence length


def check_feature_layers(layers: tuple[int, ...], n_layers: int) -> tuple[int, ...]:
    """Feature layers are 1..n_layers - 1 (the output of that many decoder layers), ascending."""
    layers = tuple(sorted(layers))
    if any(not 0 < i < n_layers for i in layers):
        raise ValueError(f"feature layers {layers} must lie in 1..{n_layers - 1}")
    return layers
