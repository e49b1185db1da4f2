"""Gemma 4's own MTP drafters (`Gemma4AssistantForCausalLM`) under our decoder and controller.

In: a Gemma 4 target run through `HFTarget(keep_shared_kv=True)` (so each forward keeps the
target's `shared_kv_states`: the keys/values of the last layer of each attention type) and
its assistant. Out: k draft tokens per step, drafted as transformers'
`SinglePositionMultiTokenCandidateGenerator` does: every step feeds
[embed(last token), hidden] at one constant position, the assistant cross-attends to the
target's KV cache, and its projected output state replaces `hidden` for the next step.

One difference from transformers: the KV is cut to the target's valid cache (what precedes
the last token; for a sliding-window layer, its window up to there), so a rejected draft's
keys are never attended to.

transformers 5.23.0 cannot build the assistant as shipped: `Gemma4TextConfig.kv_sharing_modes`
raises for a config whose layers all share KV (which every assistant's config is). While
an assistant is built, `assistant_kv_sharing` answers "reuse" for every layer of such a
config — what the assistant's layers do — and leaves every other config alone.
"""

from __future__ import annotations

import contextlib

import torch

from decode.drafters import Draft, pick
from decode.hf_target import HFTarget


@contextlib.contextmanager
def assistant_kv_sharing():
    """Let transformers build all-layers-shared (assistant) Gemma 4 configs; restores on exit."""
    from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

    original = Gemma4TextConfig.kv_sharing_modes

    def modes(cfg) -> list[str | None]:
        if cfg.num_kv_shared_layers and cfg.num_kv_shared_layers == cfg.num_hidden_layers:
            return ["reuse"] * cfg.num_hidden_layers
        return original.fget(cfg)

    Gemma4TextConfig.kv_sharing_modes = property(modes)
    try:
        yield
    finally:
        Gemma4TextConfig.kv_sharing_modes = original


def load_assistant(name_or_path: str, device: str, dtype: torch.dtype, local_only: bool):
    """A trained assistant from a local dir or the local hub cache."""
    from transformers import Gemma4AssistantForCausalLM

    with assistant_kv_sharing():
        model = Gemma4AssistantForCausalLM.from_pretrained(name_or_path, dtype=dtype, local_files_only=local_only)
    return model.to(device).eval()


class AssistantDrafter:
    """Drafts with a Gemma 4 assistant reading the target's last hidden state and KV cache."""

    name = "assistant"

    def __init__(
        self, assistant, target, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
    ) -> None:
        if not (isinstance(target, HFTarget) and target.keep_shared_kv):
            raise ValueError("the Gemma 4 assistant needs HFTarget(model, keep_shared_kv=True) over a Gemma 4 target")
        self.assistant, self.target = assistant, target
        self.embed = target.model.get_input_embeddings()  # Gemma scales its embeddings: call the module
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        self.hf_model = assistant  # for transformers' generate(assistant_model=...) in decode-bench

    def reset(self) -> None:
        pass

    @torch.inference_mode()
    def propose(self, ids: list[int], k: int, hidden: torch.Tensor | None) -> Draft:
        kv = self.target.shared_kv
        if k <= 0 or hidden is None or not kv:
            return Draft([])
        device = self.assistant.device
        length = self.target.length  # the cache holds ids[:-1]
        stale = self.target.shared_kv_end - length  # rows of rejected drafts at the end of each tensor
        kv = {
            kind: (key[:, :, : key.shape[2] - stale].to(device), value[:, :, : value.shape[2] - stale].to(device))
            for kind, (key, value) in kv.items()
        }
        position = torch.tensor([[len(ids) - 1]], device=device)
        mask = torch.ones(1, length, dtype=torch.long, device=device)
        state = hidden.reshape(1, 1, -1).to(device)
        token = torch.tensor([[ids[-1]]], device=self.embed.weight.device)
        tokens, rows = [], []
        for _ in range(k):
            inputs = torch.cat([self.embed(token).to(device, state.dtype), state], dim=-1)
            out = self.assistant(
                inputs_embeds=inputs, attention_mask=mask, position_ids=position, shared_kv_states=kv, use_cache=False
            )
            choice, q = pick(out.logits[0, -1].float(), self.temperature, self.top_p, self.generator)
            tokens.append(choice)
            if q is not None:
                rows.append(q)
            state = out.last_hidden_state
            token = torch.tensor([[choice]], device=token.device)
        return Draft(tokens, torch.stack(rows) if rows else None)
