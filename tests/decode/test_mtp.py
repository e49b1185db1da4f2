import torch

from conftest import ByteTokenizer, tiny_llama
from decode.controller import AdaptiveController, FixedController
from decode.mtp import MTPConfig, MTPDrafter, MTPHead, load_mtp, save_mtp
from decode.speculative import GenerationSettings, SpeculativeDecoder
from decode.target import HFTarget, StaticLlamaTarget

TARGET = tiny_llama(seed=3)


def greedy(prompt, n):
    with torch.inference_mode():
        out = TARGET.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def head(vocab_ids=()):
    torch.manual_seed(0)
    return MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=2, vocab_ids=vocab_ids)).eval()


def test_mtp_drafter_is_lossless_under_every_controller():
    for target_cls in (StaticLlamaTarget, HFTarget):
        for ctl in (FixedController(3), AdaptiveController(k_max=4, verify_cost_s={0: 1e-3, 4: 1.2e-3})):
            target = target_cls(TARGET)
            drafter = MTPDrafter(head(tuple(range(0, 64, 2))), TARGET.model.embed_tokens.weight.detach())
            dec = SpeculativeDecoder(target, ByteTokenizer(), drafter, ctl)
            out = [t for s in dec.generate([5, 6, 7], GenerationSettings(max_new_tokens=20)) for t in s.token_ids]
            assert out == greedy([5, 6, 7], 20)
            assert dec.stats.drafted > 0


def test_reduced_vocabulary_drafts_only_its_tokens_and_sampling_gives_full_rows():
    vocab = tuple(range(10, 20))
    drafter = MTPDrafter(head(vocab), TARGET.model.embed_tokens.weight.detach(), temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    draft = drafter.propose([1, 2, 3], 4, torch.randn(64))
    assert len(draft.tokens) == 4 and all(t in vocab for t in draft.tokens)
    assert draft.probs.shape == (4, 64)
    assert torch.allclose(draft.probs.sum(-1), torch.ones(4)) and draft.probs[:, :10].sum() == 0
    assert drafter.propose([1, 2, 3], 4, None).tokens == []  # no hidden state yet: no draft


def test_save_and_load_round_trip(tmp_path):
    h = head((1, 2, 3))
    save_mtp(h, tmp_path)
    loaded = load_mtp(tmp_path)
    x, e = torch.randn(64), torch.randn(64)
    assert loaded.cfg == h.cfg
    assert torch.allclose(loaded.step(x, e), h.step(x, e), atol=1e-2)
