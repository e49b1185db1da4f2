import torch

from commands.decode_bench import bundled_prompts
from commands.prompt_sets import HELD_OUT_TOPICS, TOPICS, held_out_prompts, prompt_bank, training_prompts
from commands.train_drafter import acceptance, fit, reduced_vocab, teacher_pass
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
            ids = MODEL.generate(
                prompt[None],
                max_new_tokens=length,
                min_new_tokens=length,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )[0]
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
    head = MTPHead(
        MTPConfig(hidden_size=64, intermediate_size=128, layers=1, vocab_ids=tuple(ids.tolist()), feature_layers=(1,))
    )
    before = acceptance(head, held, embed, embed[ids], remap, depth)
    history = fit(head, data, held, embed, embed[ids], remap, steps=300, batch=64, depth=depth, lr=3e-3, evals=3)
    after = history[-1]["held_out_acceptance"]
    assert len(history) == 3 and len(after) == depth
    assert after[0] > before[0] + 0.2, (before, after)


def test_teacher_pass_with_prompt_context_keeps_the_reply_and_the_same_anchors():
    seqs = greedy_sequences(2, 10, seed=3) + [([5, 6, 7, 8, 9, 10, 11, 12, 13], 6)]
    full = teacher_pass(MODEL, seqs, depth=2, feature_layers=(2,))
    trimmed = teacher_pass(MODEL, seqs, depth=2, feature_layers=(2,), prompt_context=1)
    assert len(trimmed.tokens) == sum(len(ids) - max(0, n - 2) for ids, n in seqs) < len(full.tokens)
    assert len(trimmed.anchors) == len(full.anchors)
    for data in (full, trimmed):  # the same positions: token, features and labels at and after each anchor
        assert data.tokens[data.anchors].tolist() == full.tokens[full.anchors].tolist()
    assert torch.equal(trimmed.labels[trimmed.anchors + 1], full.labels[full.anchors + 1])
    assert torch.allclose(trimmed.features[trimmed.anchors].float(), full.features[full.anchors].float(), atol=1e-3)
    # a context window may not reach into the sequence before (starts mark each kept sequence's first row)
    assert trimmed.starts[trimmed.anchors[-1]] == len(trimmed.tokens) - 5  # 9 tokens, the first 4 dropped


def test_fit_reports_every_held_out_set():
    data = teacher_pass(MODEL, greedy_sequences(8, 12, seed=4), 2, ())
    held = {
        "held_out": teacher_pass(MODEL, greedy_sequences(2, 12, seed=5), 2, ()),
        "held_out_conversation": teacher_pass(MODEL, greedy_sequences(2, 12, seed=6), 2, ()),
    }
    embed = MODEL.model.embed_tokens.weight.detach()
    ids, remap = reduced_vocab(data.labels, 64, keep=48)
    head = MTPHead(MTPConfig(hidden_size=64, intermediate_size=128, vocab_ids=tuple(ids.tolist())))
    history = fit(head, data, held, embed, embed[ids], remap, steps=10, batch=16, depth=2, lr=1e-3, evals=2)
    assert [sorted(h) for h in history] == [["held_out_acceptance", "held_out_conversation_acceptance", "step"]] * 2
