"""MTP drafter: a small head that reads the target's last hidden state (Gemma-4-assistant style).

In: the target's hidden state h_t at the last accepted position and the token x_{t+1}
after it. Out: draft tokens x_{t+2}, x_{t+3}, … When the config names `feature_layers`,
h_t also carries the target's residual stream after those layers (EAGLE-3's low/mid/high
fusion) and a linear map first brings it to the model width. Each step fuses
[norm(h), norm(embed(x))] to the model width, runs `layers` residual MLP blocks, and scores
a reduced vocabulary (the tokens the target actually emits, as Gemma 4's E2B/E4B drafters
do with "embedder clustering") through rows of the target's own tied embedding; the step's
output feature replaces h for the next step. Verification stays on the full vocabulary, so nothing is
lost when the reduced vocabulary misses a token — that draft is simply rejected.
Cost per draft token: the fusion, `layers` MLP blocks and a `len(vocab_ids)`-row head at the model
width — a small fraction of a target step; on CUDA `capture` replays the k-step loop as one graph
per k (measured costs: docs/decoding.md, docs/gpu.md).

Trees (`MTPDrafter.propose_tree`): each level of `decode.tree.grow_tree` is one head step over the
nodes it expands, each chaining its own parent's feature (the feature of a node is the step that
read its token), so a level of w nodes costs one step of w rows; candidates are the head's top
`branch` tokens (greedy) or `branch` draws without replacement (sampling, Gumbel top-k). A greedy
head without context attention grows its tree with `decode.tree.grow_tree_static` (`tree_table`:
every level `branch` rows, the features in one table, no host read until the end — the same tree),
which `capture` also replays as one CUDA graph per (levels, candidates).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from decode.drafters import Draft, pick
from decode.layers import rms_norm
from decode.tree import Candidates, Node, TreeShape, grow_tree, grow_tree_static, static_tree_size, tree_from_static
from decode.verify import probs_from_logits


@dataclass(frozen=True)
class MTPConfig:
    """Shape of an MTP head."""

    hidden_size: int
    intermediate_size: int
    layers: int = 1
    vocab_ids: tuple[int, ...] = ()  # reduced vocabulary (target token ids)
    rms_norm_eps: float = 1e-5
    target: str = ""
    feature_layers: tuple[int, ...] = ()  # target layers read besides the last hidden state
    context: int = 0  # recent target positions each step attends to (0: none)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (as in Llama)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:  # torch's fused kernel: one launch, not five (a draft step has five norms)
            return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)
        return rms_norm(x, self.weight, self.eps)


class MTPBlock(nn.Module):
    """Pre-norm SwiGLU MLP with a residual."""

    def __init__(self, cfg: MTPConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class ContextAttention(nn.Module):
    """Cross-attention from a draft step to the target's features at its last `context` positions.

    Keys and values are computed once per target position (`kv`) and kept by the drafter; a
    learned bias per distance (0 = the last accepted position) is added to the keys.
    """

    def __init__(self, cfg: MTPConfig) -> None:
        super().__init__()
        size = cfg.hidden_size
        self.heads = max(1, size // 64)
        self.norm_q = RMSNorm(size, cfg.rms_norm_eps)
        self.norm_c = RMSNorm(size, cfg.rms_norm_eps)
        self.q = nn.Linear(size, size, bias=False)
        self.kv_proj = nn.Linear(size, 2 * size, bias=False)
        self.o = nn.Linear(size, size, bias=False)
        self.distance = nn.Parameter(torch.zeros(cfg.context, size))

    def kv(self, context: torch.Tensor) -> torch.Tensor:
        """[..., n, H] context features (`MTPHead.start` of the target's) → [..., n, 2H] keys|values."""
        return self.kv_proj(self.norm_c(context))

    def forward(self, x: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """x [..., H]; kv [..., W, 2H], oldest first, the last row at distance 0; valid [..., W] or None."""
        width, heads = kv.shape[-2], self.heads
        k, v = kv.chunk(2, dim=-1)
        k = k + self.distance[:width].flip(0)

        def split(t: torch.Tensor) -> torch.Tensor:  # [..., n, H] -> [..., heads, n, d]
            return t.unflatten(-1, (heads, -1)).transpose(-2, -3)

        q = split(self.q(self.norm_q(x)).unsqueeze(-2))
        mask = None if valid is None else valid[..., None, None, :]
        att = F.scaled_dot_product_attention(q, split(k), split(v), attn_mask=mask)
        return x + self.o(att.transpose(-2, -3).flatten(-2).squeeze(-2))


class MTPHead(nn.Module):
    """The trainable part; embeddings and LM-head rows come from the target (frozen)."""

    def __init__(self, cfg: MTPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_in = 1 + len(cfg.feature_layers)
        if n_in > 1:  # one norm per depth, then down to the model width
            self.norm_in = nn.ModuleList(RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) for _ in range(n_in))
            self.proj_in = nn.Linear(n_in * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.norm_h = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_e = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.fuse = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.attention = ContextAttention(cfg) if cfg.context else None
        self.blocks = nn.ModuleList(MTPBlock(cfg) for _ in range(cfg.layers))
        self.norm_out = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def start(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """The target's features (last hidden state, then `feature_layers`) → the first step's input."""
        if not self.cfg.feature_layers:
            return target_hidden
        parts = target_hidden.split(self.cfg.hidden_size, dim=-1)
        return self.proj_in(torch.cat([norm(p) for norm, p in zip(self.norm_in, parts)], dim=-1))

    def context_kv(self, target_hidden: torch.Tensor) -> torch.Tensor:
        """Keys|values [n, 2H] of target positions for `ContextAttention` (computed once per position)."""
        return self.attention.kv(self.start(target_hidden))

    def step(
        self,
        hidden: torch.Tensor,
        token_embed: torch.Tensor,
        kv: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One draft step: (h, embed(x)) → the next feature (feeds the next step and the head).

        With `context`, the step also attends to `kv` (`context_kv` rows, oldest first).
        """
        x = self.fuse(torch.cat([self.norm_h(hidden), self.norm_e(token_embed)], dim=-1))
        if self.attention is not None and kv is not None and kv.shape[-2]:
            x = self.attention(x, kv, valid)
        for block in self.blocks:
            x = block(x)
        return x

    def logits(self, feature: torch.Tensor, head_rows: torch.Tensor) -> torch.Tensor:
        """Scores over the reduced vocabulary."""
        return F.linear(self.norm_out(feature), head_rows)


def save_mtp(head: MTPHead, out_dir: str | Path) -> None:
    """`model.safetensors` (fp16) + `config.json`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()},
        str(out / "model.safetensors"),
    )
    (out / "config.json").write_text(json.dumps(asdict(head.cfg)))


DEFAULT_PATH = Path(__file__).resolve().parent / "assets" / "mtp-smollm2-135m"


def read_mtp_config(path: str | Path = "") -> MTPConfig:
    """The config of the head saved at `path` (default: the one shipped for SmolLM2)."""
    path = Path(path or DEFAULT_PATH)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no MTP drafter at {path} (expected config.json and model.safetensors); "
            "train one with `voice train-drafter`"
        )
    raw = json.loads((path / "config.json").read_text())
    raw["vocab_ids"] = tuple(raw["vocab_ids"])
    raw["feature_layers"] = tuple(raw.get("feature_layers", ()))
    raw.setdefault("context", 0)
    return MTPConfig(**raw)


def load_mtp(path: str | Path = "", dtype: torch.dtype = torch.float32, device="cpu") -> MTPHead:
    """A saved head."""
    from safetensors.torch import load_file

    head = MTPHead(read_mtp_config(path))
    head.load_state_dict(load_file(str(Path(path or DEFAULT_PATH) / "model.safetensors")))
    return head.to(device=device, dtype=dtype).eval()


class MTPDrafter:
    """Drafts k tokens from the target's hidden state with an `MTPHead`."""

    name = "mtp"

    def __init__(
        self,
        head: MTPHead,
        embed: torch.Tensor,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.head = head
        self.embed = embed  # the target's input embedding [V, H]
        ids = torch.tensor(head.cfg.vocab_ids or range(embed.shape[0]), device=embed.device)
        self.vocab_ids = ids
        param = next(head.parameters())
        self.head_rows = embed[ids].to(param.dtype)  # tied LM head, reduced vocabulary
        self.full_vocab = embed.shape[0]
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.context_kv = torch.empty(0, 2 * head.cfg.hidden_size, dtype=param.dtype, device=param.device)
        self.graphs = None  # `DraftGraphs` once `capture` ran

    def capture(self, max_k: int, branch: int = 1) -> bool:
        """On CUDA, capture the greedy draft loop for k = 1..max_k and, with `branch` > 1, the tree of
        1..max_k levels and `branch` candidates a node (`decode.graphs.DraftGraphs`); False where it does
        not apply (CPU, sampling, a head with context attention), and drafts stay eager."""
        if self.embed.device.type != "cuda" or not self.static_trees:
            return False
        from decode.graphs import DraftGraphs

        trees = [TreeShape(depth, branch) for depth in range(1, max_k + 1)] if branch > 1 else []
        self.graphs = DraftGraphs(self, list(range(1, max_k + 1)), trees)
        return True

    @property
    def static_trees(self) -> bool:
        """Greedy, without context attention: trees grow in fixed shapes (`tree_table`), graphs can hold them."""
        return self.temperature <= 0 and self.head.attention is None

    def reset(self) -> None:
        self.context_kv = self.context_kv[:0]

    @torch.inference_mode()
    def observe(self, start: int, hidden: torch.Tensor) -> None:
        """The target's features at positions start, start+1, … (what its cache now holds there)."""
        if self.head.attention is not None:
            rows = self.head.context_kv(hidden.to(self.context_kv.dtype))
            self.context_kv = torch.cat([self.context_kv[:start], rows])

    def copy_context(self, source: MTPDrafter, n: int) -> None:
        """`source`'s observed features at positions 0..n-1 (`decode.drafters.share_context`)."""
        self.context_kv = source.context_kv[:n].clone()

    @torch.inference_mode()
    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        if k <= 0 or hidden is None:
            return Draft([])
        if self.graphs is not None and (tokens := self.graphs.run(hidden, ids[-1], k)) is not None:
            return Draft(tokens)
        dtype = self.head_rows.dtype
        feature, token = self.head.start(hidden.to(dtype)), ids[-1]
        kv = self._context(ids)
        tokens, rows = [], []
        for _ in range(k):
            feature = self.head.step(feature, self.embed[token].to(dtype), kv)
            logits = self.head.logits(feature, self.head_rows).float()
            choice, q_small = pick(logits, self.temperature, self.top_p, self.generator)
            if q_small is not None:  # q over the full vocabulary: zero outside the reduced one
                rows.append(torch.zeros(self.full_vocab, device=q_small.device).index_copy_(0, self.vocab_ids, q_small))
            token = int(self.vocab_ids[choice])
            tokens.append(token)
        return Draft(tokens, torch.stack(rows) if rows else None)

    def _context(self, ids: list[int]) -> torch.Tensor | None:
        """The context attention's keys/values before the last token (None: a head without it)."""
        if self.head.attention is None:
            return None
        last = len(ids) - 1  # positions 0..last-1 are in the target's cache; last-1 gave `hidden`
        return self.context_kv[max(0, last - self.head.cfg.context) : last]

    @torch.inference_mode()
    def propose_tree(self, ids: list[int], nodes: int, shape: TreeShape, hidden: torch.Tensor | None) -> Draft:
        """A tree of at most `nodes` tokens, `shape.depth` levels, `shape.branch` candidates per expanded
        node (module docstring); with sampling, `probs` holds the head's law at every expanded row."""
        if nodes <= 0 or hidden is None:
            return Draft([])
        if not self.static_trees:
            return self.grown_tree(ids, nodes, shape, hidden)
        table = None if self.graphs is None else self.graphs.run_tree(hidden, ids[-1], nodes, shape)
        if table is None:
            dev = self.embed.device
            last, budget = torch.tensor([ids[-1]], device=dev), torch.tensor(nodes, device=dev)
            table = self.tree_table(hidden, last, budget, shape).tolist()
        tree = tree_from_static(table)
        return Draft(tree.tokens, None, tree.parents)

    @torch.inference_mode()
    def tree_table(
        self, hidden: torch.Tensor, last_token: torch.Tensor, nodes: torch.Tensor, shape: TreeShape
    ) -> torch.Tensor:
        """The greedy tree as `decode.tree.grow_tree_static` lays it out (graph-safe): after `last_token` [1]
        with the target's `hidden` there, `nodes` (0-dim) kept. Each level runs the head over `shape.branch`
        frontier rows, reading its parents' features from one table and writing its own there."""
        dtype, width = self.head_rows.dtype, shape.branch
        branch = min(shape.branch, self.head_rows.shape[0])
        n = static_tree_size(shape.depth, width, branch)
        # row 0: the root's input, row id + 2: the feature node id's step gave (the root's id is -1), n + 2: none
        table = torch.zeros(n + 3, self.head.cfg.hidden_size, dtype=dtype, device=self.embed.device)
        table[0] = self.head.start(hidden.to(dtype))

        def expand(parents: torch.Tensor, ids: torch.Tensor, tokens: torch.Tensor) -> tuple:
            out = self.head.step(table.index_select(0, parents + 2), self.embed.index_select(0, tokens).to(dtype))
            table.index_copy_(0, ids + 2, out)
            top = torch.softmax(self.head.logits(out, self.head_rows).float(), dim=-1).topk(branch)
            return self.vocab_ids[top.indices], top.values

        return grow_tree_static(expand, last_token, nodes, shape.depth, width, branch)

    @torch.inference_mode()
    def grown_tree(self, ids: list[int], nodes: int, shape: TreeShape, hidden: torch.Tensor) -> Draft:
        """The tree `decode.tree.grow_tree` grows level by level over the frontier's rows: what sampling and
        context heads draft, and for a greedy head the reference that `tree_table` equals."""
        dtype = self.head_rows.dtype
        start = self.head.start(hidden.to(dtype))
        kv = self._context(ids)
        features: dict[int, torch.Tensor] = {}  # node id -> the feature its own step gave

        def expand(frontier: list[Node]) -> list[Candidates]:
            before = torch.stack([start if n.id < 0 else features[n.parent] for n in frontier])
            tokens = torch.tensor([n.token for n in frontier], device=self.embed.device)
            context = None if kv is None else kv.expand(len(frontier), -1, -1)
            out = self.head.step(before, self.embed[tokens].to(dtype), context)
            features.update((n.id, f) for n, f in zip(frontier, out))
            return self._candidates(self.head.logits(out, self.head_rows).float(), shape.branch)

        tree = grow_tree(expand, ids[-1], nodes, shape.depth, shape.branch)
        probs = None
        if self.temperature > 0:
            zero = torch.zeros(self.full_vocab, device=self.embed.device)
            probs = torch.stack([zero if q is None else q for q in tree.laws])
        return Draft(tree.tokens, probs, tree.parents)

    def _candidates(self, logits: torch.Tensor, branch: int) -> list[Candidates]:
        """Per row of logits [B, reduced V]: the top `branch` tokens and their probabilities (greedy), or
        `branch` draws without replacement, the law's `branch` largest probabilities and the law over the
        full vocabulary (sampling)."""
        branch = min(branch, logits.shape[-1])
        if self.temperature <= 0:
            top = torch.softmax(logits, dim=-1).topk(branch)
            tokens = self.vocab_ids[top.indices].tolist()
            return [Candidates(t, p) for t, p in zip(tokens, top.values.tolist())]
        q = probs_from_logits(logits, self.temperature, self.top_p)
        noise = torch.rand(q.shape, generator=self.generator).to(q.device)
        drawn = (q.log() - (-noise.log()).log()).topk(branch).indices  # Gumbel top-k: draws without replacement
        support = (q > 0).sum(dim=-1).tolist()
        ranked = q.topk(branch).values.tolist()
        tokens = self.vocab_ids[drawn].tolist()
        out = []
        for row, (t, r, m) in enumerate(zip(tokens, ranked, support)):
            law = torch.zeros(self.full_vocab, device=q.device).index_copy_(0, self.vocab_ids, q[row])
            out.append(Candidates(t[:m], r[:m], law))
        return out


def load_mtp_drafter(
    path: str, target, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> MTPDrafter:
    """The MTP drafter at `path` (default: the one shipped for SmolLM2) over `target`'s embedding."""
    path = path or str(DEFAULT_PATH)
    embed = target.embed
    head = load_mtp(path, device=embed.device)
    if head.cfg.hidden_size != embed.shape[1]:
        raise ValueError(f"MTP drafter at {path} has width {head.cfg.hidden_size}, the target {embed.shape[1]}")
    if tuple(target.feature_layers) != head.cfg.feature_layers:
        raise ValueError(
            f"MTP drafter at {path} reads target layers {head.cfg.feature_layers}; "
            f"the target gives {tuple(target.feature_layers)} (make_target(feature_layers=...))"
        )
    return MTPDrafter(head, embed, temperature, top_p, generator)
