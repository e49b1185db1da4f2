"""Gemma 4's assistant drafter under our decoder, with tiny random Gemma 4 configs (no download)."""

import pytest
import torch

from conftest import ByteTokenizer, plain_greedy
from decode.assistant import AssistantDrafter, assistant_kv_sharing
from decode.controller import AdaptiveController, FixedController
from decode.hf_target import HFTarget
from decode.jobs import GenerationSettings
from decode.speculative import SpeculativeDecoder

transformers = pytest.importorskip("transformers")
LAYER_TYPES = ["sliding_attention", "full_attention"]


def build_assistant(config):
    """A randomly initialised `Gemma4AssistantForCausalLM` of `config`."""
    with assistant_kv_sharing():
        return transformers.Gemma4AssistantForCausalLM(config).eval()


def text_config(hidden: int, layers: int, shared: int, per_layer: int = 0, window: int = 128):
    """Gemma 4 text config; `per_layer`: per-layer input width (E2B/E4B targets have them, assistants not)."""
    return transformers.Gemma4TextConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=16,
        layer_types=LAYER_TYPES * (layers // 2),
        sliding_window=window,
        hidden_size_per_layer_input=per_layer,
        vocab_size_per_layer_input=64 if per_layer else 0,
        num_kv_shared_layers=shared,
        max_position_embeddings=256,
    )


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    target = transformers.Gemma4ForCausalLM(text_config(64, 4, shared=2, per_layer=8)).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy paths vary
        target.model.embed_tokens.weight.mul_(8.0)
    assistant = build_assistant(
        transformers.Gemma4AssistantConfig(text_config=text_config(32, 2, shared=2), backbone_hidden_size=64)
    )
    return target, assistant


def test_assistant_drafts_are_lossless_under_our_controllers(pair):
    target, assistant = pair
    for ctl in (FixedController(3), AdaptiveController(k_max=4, verify_cost_s={0: 1e-3, 4: 1.1e-3})):
        for prompt in ([5, 6, 7], [9, 1, 2, 3, 4, 8]):
            hf_target = HFTarget(target, keep_shared_kv=True)
            dec = SpeculativeDecoder(hf_target, ByteTokenizer(), AssistantDrafter(assistant, hf_target), ctl)
            out = [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=24)) for t in s.token_ids]
            assert out == plain_greedy(target, prompt, 24)
            if isinstance(ctl, FixedController):  # what the adaptive one drafts depends on the machine's speed
                assert dec.stats.drafted > 0


def test_sampling_with_the_assistant_gives_full_probability_rows(pair):
    target, assistant = pair
    hf_target = HFTarget(target, keep_shared_kv=True)
    out = hf_target.forward([5, 6, 7])
    drafter = AssistantDrafter(assistant, hf_target, temperature=1.0, generator=torch.Generator().manual_seed(0))
    draft = drafter.propose([5, 6, 7, 8], 3, out.hidden[-1])
    assert len(draft.tokens) == 3 and draft.probs.shape == (3, 64)
    assert torch.allclose(draft.probs.sum(-1), torch.ones(3))


def test_transformers_own_assisted_generate_matches_greedy(pair):
    target, assistant = pair
    assistant.generation_config.num_assistant_tokens = 4  # a random-init assistant has no generation config
    with torch.inference_mode():
        out = target.generate(
            torch.tensor([[5, 6, 7]]),
            assistant_model=assistant,
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    assert out[0, 3:].tolist() == plain_greedy(target, [5, 6, 7], 16)


def test_assistant_needs_a_target_that_keeps_shared_kv(pair):
    target, assistant = pair
    with pytest.raises(ValueError, match="keep_shared_kv"):
        AssistantDrafter(assistant, HFTarget(target))


def test_a_saved_assistant_loads_back_through_the_kv_sharing_fix(pair, tmp_path):
    from decode.assistant import load_assistant

    target, assistant = pair
    assistant.save_pretrained(tmp_path)
    loaded = load_assistant(str(tmp_path), "cpu", torch.float32, local_only=True)
    hf_target = HFTarget(target, keep_shared_kv=True)
    hidden = hf_target.forward([5, 6, 7]).hidden[-1]
    drafts = [AssistantDrafter(a, hf_target).propose([5, 6, 7, 8], 4, hidden).tokens for a in (assistant, loaded)]
    assert drafts[0] == drafts[1] and len(drafts[0]) == 4


def test_rollback_and_drafting_past_the_sliding_window():
    torch.manual_seed(1)
    target = transformers.Gemma4ForCausalLM(text_config(64, 4, shared=2, per_layer=8, window=8)).eval()
    with torch.no_grad():
        target.model.embed_tokens.weight.mul_(8.0)
    assistant = build_assistant(
        transformers.Gemma4AssistantConfig(text_config=text_config(32, 2, shared=2, window=8), backbone_hidden_size=64)
    )
    prompt = [5, 6, 7, 9, 11, 13]
    for ctl in (FixedController(4), AdaptiveController(k_max=4, verify_cost_s={0: 1e-3, 4: 1.1e-3})):
        hf_target = HFTarget(target, keep_shared_kv=True)
        dec = SpeculativeDecoder(hf_target, ByteTokenizer(), AssistantDrafter(assistant, hf_target), ctl)
        out = [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=40)) for t in s.token_ids]
        assert out == plain_greedy(target, prompt, 40)  # 46 positions: five times the window
        assert dec.stats.drafted > dec.stats.accepted  # rejections happened, so rollbacks did
