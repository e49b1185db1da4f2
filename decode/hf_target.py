"""Any transformers causal LM as a target (`decode.target`'s interface) over a `DynamicCache`.

In: token ids appended at the current position. Out: `Forward(logits, hidden)` for them.
Rollback is `cache.crop(-n)` (transformers 5.x takes the number of tokens to drop, as a
negative value). It verifies chains only: draft trees need `decode.target.StaticLlamaTarget`.
Cost: one eager transformers forward per call, cache-object overhead included.
"""

from __future__ import annotations

import torch

from decode.target import Forward, check_feature_layers


class HFTarget:
    """Any transformers causal LM over a DynamicCache; it verifies chains only (no tree mask)."""

    trees = False

    def __init__(self, model, feature_layers: tuple[int, ...] = (), keep_shared_kv: bool = False) -> None:
        """`keep_shared_kv`: keep Gemma 4's `shared_kv_states` of each forward (its assistant drafter reads them)."""
        from transformers import DynamicCache

        self.model = model
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.get_text_config().vocab_size
        self._cache_cls = DynamicCache
        self.cache = self._new_cache()
        self.length = 0
        self.feature_layers = check_feature_layers(feature_layers, model.config.get_text_config().num_hidden_layers)
        self.max_len = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 1 << 30
        self.keep_shared_kv = keep_shared_kv
        self.shared_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.shared_kv_end = 0  # the cache length when `shared_kv` was taken (its last row is position end-1)

    @property
    def embed(self) -> torch.Tensor:
        """The input embedding table (a Gemma model scales it in its embedding module)."""
        return self.model.get_input_embeddings().weight.detach()

    def _new_cache(self):
        cache = self._cache_cls(config=self.model.config)
        # sliding-window layers keep their past until `crop`, so rollback works past the window
        if hasattr(cache, "activate_past_recording"):
            cache.activate_past_recording()
        return cache

    def reset(self) -> None:
        """Forget the whole context."""
        self.cache = self._new_cache()
        self.length = 0
        self.shared_kv = None

    def rollback(self, length: int) -> None:
        """Drop cached positions >= length."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        if self.length:  # crop(0) trims sliding-window layers back to their window; an empty cache has none
            self.cache.crop(length - self.length)
        self.length = length

    @torch.inference_mode()
    def forward(self, token_ids: list[int], parents: list[int] | None = None) -> Forward:
        """Run the model on `token_ids` after the cached context."""
        if parents is not None:
            raise ValueError("HFTarget verifies chains only: draft trees need StaticLlamaTarget")
        ids = torch.tensor([token_ids], device=self.device)
        positions = torch.arange(self.length, self.length + len(token_ids), device=self.device)
        extra = {"return_shared_kv_states": True} if self.keep_shared_kv else {}
        out = self.model(
            input_ids=ids,
            past_key_values=self.cache,
            use_cache=True,
            position_ids=positions[None],
            output_hidden_states=True,
            **extra,
        )
        self.length += len(token_ids)
        if self.keep_shared_kv:  # each attention type's cache (a sliding layer: its window), rejected drafts too
            self.shared_kv, self.shared_kv_end = out.shared_kv_states, self.length
        states = out.hidden_states  # [0] the embeddings, [i] after i layers, [-1] after the final norm
        hidden = torch.cat([states[-1][0], *(states[i][0] for i in self.feature_layers)], dim=-1)
        return Forward(out.logits[0].float(), hidden)
