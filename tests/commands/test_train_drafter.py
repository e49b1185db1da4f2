import torch

from commands.decode_bench import bundled_prompts
from commands.train_drafter import (
    HELD_OUT_TOPICS,
    TOPICS,
    acceptance,
    fit,
    held_out_prompts,
    prompt_bank,
    reduced_vocab,
    teacher_pass,
    training_prompts,
)
from conftest import tiny_llama
from decode.mtp import MTPConfig, MTPHead
from decode.target import StaticLlamaTarget

MODEL = tiny_llama(seed=5, layers=3)


def greedy_sequences(n: int, length: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt + greedy reply, prompt length) from the tiny target."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(1, 64, (4,), generator=rng)
        with torch.inference_mode():
            ids = MODEL.generate(prompt[None], max_new_tokens=length, min_new_tokens=length, do_sample=False,
                                 pad_token_id=0, eos_token_id=None)[0]
        out.append((ids.tolist(), 4))
    return out


def test_prompt_sets_keep_the_bench_prompts_and_held_out_topics_out_of_training():
    train = training_prompts(3000, set(bundled_prompts()))
    assert len(set(train)) == 3000 and not set(train) & set(bundled_prompts())
    assert not any(topic in p for p in train for topic in HELD_OUT_TOPICS)
    held = held_out_prompts(40)
    assert len(held) == 40 and not set(held) & set(prompt_bank(TOPICS))


def test_teacher_pass_features_and_labels_are_what_the_decoder_sees():
    seqs = greedy_sequences(3, 12, seed=0) + [([5, 6, 7, 8, 9], 2)]  # ragged: padding must not leak
    data = teacher_pass(MODEL, seqs, depth=2, feature_layers=(2,), batch=3)
    assert data.features.shape == (sum(len(s) for s, _ in seqs), 128)
    start = 0
    for ids, _ in seqs:
        fwd = StaticLlamaTarget(MODEL, feature_layers=(2,)).forward(ids)
        span = slice(start, start + len(ids))
        assert torch.allclose(data.features[span].float(), fwd.hidden, atol=1e-2)
        assert data.labels[span].tolist() == fwd.logits.argmax(-1).tolist()
        assert data.tokens[span].tolist() == ids
        start += len(ids)
    # anchors: from the last prompt token while depth more tokens follow inside the same sequence
    assert data.anchors[:3].tolist() == [3, 4, 5] and len(data.anchors) == 3 * 11 + 2


def test_fit_raises_held_out_acceptance_on_the_targets_own_replies():
    depth = 3
    data = teacher_pass(MODEL, greedy_sequences(48, 24, seed=1), depth, (1,))
    held = teacher_pass(MODEL, greedy_sequences(8, 24, seed=2), depth, (1,))
    embed = MODEL.model.embed_tokens.weight.detach()
    ids, remap = reduced_vocab(data.labels, 64, keep=48)
    torch.manual_seed(0)
    head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, layers=1, vocab_ids=tuple(ids.tolist()),
                             feature_layers=(1,)))
    before = acceptance(head, held, embed, embed[ids], remap, depth)
    history = fit(head, data, held, embed, embed[ids], remap, steps=300, batch=64, depth=depth, lr=3e-3, evals=3)
    after = history[-1]["held_out_acceptance"]
    assert len(history) == 3 and len(after) == depth
    assert after[0] > before[0] + 0.2, (before, after)
