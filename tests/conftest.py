"""Shared fixtures: tiny random Llama models, a byte tokenizer, and the embedded stack."""

from __future__ import annotations

import pytest
import torch


class ByteTokenizer:
    """Token id = one UTF-8 byte; decodes like a byte-level BPE tokenizer would."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


def plain_greedy(model, prompt: list[int], n: int) -> list[int]:
    """The reference every lossless test compares with: transformers' greedy `generate`, exactly n tokens."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt], device=model.device),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture
def byte_tokenizer():
    return ByteTokenizer()


def tiny_llama(seed: int, vocab: int = 64, hidden: int = 64, layers: int = 2):
    """A random LlamaForCausalLM small enough for property tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    # sharper logits than the default init, so greedy paths are not all one token. The head is
    # untied and scaled, not the embedding: a tied head over a scaled embedding made the model
    # repeat its last input token whatever the context (attention bugs were invisible).
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@pytest.fixture(scope="session")
def stack():
    """The embedded models, prepared once (slow)."""
    from voice.config import load_config
    from voice.models import prepare
    from voice.stack import load_stack

    cfg = load_config()
    prepare(cfg.models)
    return load_stack(cfg)


@pytest.fixture(scope="session")
def question_wav(tmp_path_factory, stack):
    """A spoken question synthesised by piper."""
    from audio.wavio import write_wav

    path = tmp_path_factory.mktemp("audio") / "question.wav"
    write_wav(path, stack.tts.synthesize_all("What is the capital of France?", deterministic=True), stack.tts.rate_hz)
    return path
