import json

import pytest

from commands.cli import main
from commands.decode_bench import print_table
from commands.decode_bench_synthetic import load_synthetic_config, run_synthetic_bench
from commands.decode_runs import against_greedy, first_divergence
from voice.config import ConfigError, load_config

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 96,
    "tie_word_embeddings": True,
    "max_position_embeddings": 512,
}


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_synthetic_bench_is_labelled_lossless_and_accepts_what_the_oracle_was_told(tiny_config):
    cfg = load_config(None, ["decode.linear_layout=linear"])
    report = run_synthetic_bench(
        cfg, tiny_config, [1.0, 0.0], n_prompts=2, max_new_tokens=16, prompt_tokens=8, progress=False
    )
    assert report["acceptance"] == "synthetic" and report["drafter"] == "oracle"
    assert report["config"]["hidden_size"] == 64 and report["token_identity_guaranteed"]
    runs = {(r["mode"], r["k"]): r for r in report["runs"]}
    assert list(runs)[0] == ("greedy", 0) and ("adaptive", None) in runs and ("heuristic", None) in runs
    assert all(r["identical"] and r["diverged_prompts"] == 0 for r in report["runs"])
    assert runs[("fixed", 1)]["acceptance_per_position"] == [1.0]
    assert runs[("fixed", 4)]["acceptance_per_position"] == [1.0, 0.0]  # position 3 is never verified
    assert report["oracle_expected_tokens_per_step"]["4"] == 2.0
    assert report["graph_capture_s"] is None and report["step_ms"]["graph"] is None  # no CUDA here
    assert "SYNTHETIC" in print_table(report)


def test_the_bundled_llama_config_is_llama_3_2_1b_shaped():
    config = load_synthetic_config("llama-3.2-1b")
    assert (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
        config.tie_word_embeddings,
    ) == (2048, 16, 32, 8, 8192, 128256, True)


def test_only_llama_class_configs_and_known_names(tmp_path):
    gemma = tmp_path / "gemma.json"
    gemma.write_text(json.dumps({"model_type": "gemma2", "hidden_size": 64}))
    with pytest.raises(ConfigError, match="not a Llama-class model"):
        load_synthetic_config(str(gemma))
    with pytest.raises(ConfigError, match="bundled: llama-3.2-1b"):
        load_synthetic_config("gemma4-e2b-text")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--oracle-accept", "0.5"], "go with --synthetic"),
        (["--synthetic", "llama-3.2-1b", "--oracle-accept", "0.9,1.5"], "probabilities in [0, 1]"),
        (["--synthetic", "llama-3.2-1b", "--drafter", "ngram"], "drop --drafter"),
    ],
)
def test_flags_that_do_not_fit_are_one_line_errors(argv, message, capsys):
    assert main(["decode-bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_first_divergence_per_prompt():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    out = against_greedy([[1, 2, 3], [4, 5, 9]], [[1, 2, 3], [4, 5, 6]])
    assert out == {"identical": False, "diverged_prompts": 1, "first_divergence": [None, 2]}


def test_a_bf16_table_shows_where_each_prompt_left_greedy():
    runs = [
        {"mode": "greedy", "k": 0, "tokens_per_s": 1.0, **against_greedy([[1], [2]], [[1], [2]])},
        {"mode": "adaptive", "k": None, "tokens_per_s": 1.0, **against_greedy([[1], [3]], [[1], [2]])},
    ]
    report = {
        "target": "t",
        "drafter": "mtp",
        "device": "cuda",
        "dtype": "bfloat16",
        "prompts": 2,
        "prompt_set": "single",
        "mean_prompt_tokens": 9,
        "max_new_tokens": 1,
        "runs": runs,
        "speedup": {},
        "verify_cost_ms": {},
        "token_identity_guaranteed": False,
    }
    table = print_table(report)
    assert "bfloat16: no token-identity guarantee" in table
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("prompt "))
    assert lines[header].split() == ["prompt", "greedy0", "adaptive"]
    assert [lines[header + 1].split(), lines[header + 2].split()] == [["0", "-", "-"], ["1", "-", "0"]]
