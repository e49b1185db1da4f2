"""Block weights (`decode/blocks.py`): found only where exact, the same product as fp32 up to the order
of sums, a row's result independent of the rows beside it, and speculative greedy == plain greedy."""

import pytest
import torch

from conftest import ByteTokenizer, tiny_llama
from decode.blocks import GROUP, BlockWeight, cpu_isas, find_q4, find_q8, load_kernel
from decode.controller import FixedController
from decode.drafters import ModelDrafter, NgramDrafter, NoDrafter
from decode.jobs import GenerationSettings
from decode.speculative import SpeculativeDecoder
from decode.target import StaticLlamaTarget

needs_kernel = pytest.mark.skipif(not cpu_isas(), reason="the block kernel needs AVX2 + FMA or AVX-512")


def as_q4_1(w: torch.Tensor) -> torch.Tensor:
    """GGUF's Q4_1 round trip: per group of 32, m = fp16(min), d = fp16((max - min) / 15), w = d·q + m."""
    g = w.reshape(w.shape[0], -1, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    d, m = ((hi - lo) / 15).half().float(), lo.half().float()
    q = torch.round((g - lo[..., None]) / torch.where(d > 0, d, 1)[..., None]).clamp(0, 15)
    return (q * d[..., None] + m[..., None]).reshape(w.shape)


def as_q8_0(w: torch.Tensor) -> torch.Tensor:
    """GGUF's Q8_0 round trip: per group of 32, d = fp16(max|w| / 127), w = d·round(w / d)."""
    g = w.reshape(w.shape[0], -1, GROUP)
    d = (g.abs().amax(-1) / 127).half().float()
    return (torch.round(g / d[..., None]).clamp(-127, 127) * d[..., None]).reshape(w.shape)


def blocks_model(seed: int = 0, **kw):
    """A tiny Llama whose linear weights are Q4_1 values and whose LM head is Q8_0 values, as the
    embedded target's are (a GGUF dequantised)."""
    model = tiny_llama(seed=seed, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(as_q8_0(p) if name.startswith("lm_head") else as_q4_1(p))
    return model


def test_only_exact_blocks_are_found():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    assert find_q4(w) is None and find_q8(w) is None  # plain fp32 values
    q4, q8 = as_q4_1(w), as_q8_0(w)
    found = find_q4(q4)
    assert found is not None and torch.equal(
        found.q.float() * found.d[..., None] + found.m[..., None], q4.view(32, 2, 32)
    )
    assert find_q8(q8) is not None
    assert find_q4(q4[:, :48]) is None  # inputs not whole groups of 32
    nudged = q4.clone()
    nudged[3, 5] = torch.nextafter(nudged[3, 5], torch.tensor(9.0))  # one weight one ulp off
    assert find_q4(nudged) is None


@needs_kernel
@pytest.mark.parametrize("isa", ["avx512", "avx2"])  # each build this CPU runs: an AVX-512 CPU tests both
@pytest.mark.parametrize("kind", ["q4", "q8"])
def test_block_product_is_the_fp32_product_and_each_row_its_own(kind, isa):
    if isa not in cpu_isas():
        pytest.skip(f"this CPU does not run the {isa} build")
    kernel = load_kernel(isa)
    assert kernel is not None, f"the CPU runs {isa} but the block kernel did not build"
    torch.manual_seed(1)
    w = torch.randn(48, 96)
    w = as_q4_1(w) if kind == "q4" else as_q8_0(w)
    weight = BlockWeight((find_q4 if kind == "q4" else find_q8)(w), kernel)
    for rows in (1, 3, 4, 5, 16, 17, 33):  # passes of 4 (AVX2) or 16 (AVX-512) rows, and remainders
        x = torch.randn(rows, 96)
        got = weight.apply(x)
        assert torch.allclose(got.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-5)
        alone = torch.cat([weight.apply(x[i : i + 1]) for i in range(rows)])
        assert torch.equal(got, alone)  # bit for bit, whatever the rows beside it


@needs_kernel
def test_a_target_on_blocks_computes_the_fp32_targets_logits():
    model = blocks_model(layers=3)
    fp32, held = StaticLlamaTarget(model, max_len=128), StaticLlamaTarget(model, max_len=128)
    assert held.use_blocks() == 4 * 3 + 1  # qkv, o, gate/up and down of each layer, and the LM head
    ids = [(7 * i + 3) % 64 for i in range(40)]
    assert torch.allclose(held.forward(ids).logits, fp32.forward(ids).logits, atol=1e-4)
    for width in (1, 5, 9):
        step = [(5 * width + j) % 64 for j in range(width)]
        wide = held.forward(step).logits
        held.rollback(len(ids))
        one_by_one = torch.cat([held.forward([t]).logits for t in step])
        held.rollback(len(ids))
        assert torch.allclose(wide, one_by_one, atol=1e-5)
        assert torch.equal(wide.argmax(-1), one_by_one.argmax(-1))


def test_weights_that_are_not_blocks_stay_fp32():
    target = StaticLlamaTarget(tiny_llama(seed=0), max_len=64)
    before = [w for layer in target.layers for w in layer]
    assert target.use_blocks() == 0
    assert all(a is b for a, b in zip(before, [w for layer in target.layers for w in layer]))


@needs_kernel
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("drafter", ["ngram", "model"])
def test_speculative_greedy_on_blocks_equals_plain_greedy_on_blocks(drafter, k):
    model = blocks_model()
    n = 24

    def run(drafter_, controller, prompt):
        target = StaticLlamaTarget(model, max_len=128)
        assert target.use_blocks() > 0
        dec = SpeculativeDecoder(target, ByteTokenizer(), drafter_, controller)
        return [t for s in dec.generate(prompt, GenerationSettings(max_new_tokens=n)) for t in s.token_ids]

    for prompt in ([5, 9, 13, 5, 9, 13, 5], [41, 7, 22, 3, 60, 18]):
        make = {
            "ngram": lambda: NgramDrafter(3, 1),
            "model": lambda: ModelDrafter(StaticLlamaTarget(tiny_llama(seed=1, hidden=32, layers=1), max_len=128)),
        }
        plain = run(NoDrafter(), FixedController(0), prompt)
        assert run(make[drafter](), FixedController(k), prompt) == plain
