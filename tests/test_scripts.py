"""scripts/: every tool answers `--help` from the venv's python (or bash), and the pure rules and
bundled data of the end-of-turn evaluation (`scripts/eot_eval.py`) hold.

A file added to scripts/ without a test here fails `test_every_tool_in_scripts_is_tested`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
# each tool and the interpreter that runs it
TOOLS = {
    "bootstrap": "bash",
    "gpu-bench": "bash",
    "gpu-turn": "bash",
    "brief_eval.py": sys.executable,
    "eot_eval.py": sys.executable,
    "gguf_target.py": sys.executable,
    "gpu_bench_report.py": sys.executable,
    "gpu_turn_pack.py": sys.executable,
    "gpu_turn_report.py": sys.executable,
    "linear_layout.py": sys.executable,
    "make_conversations.py": sys.executable,
    "step_graphs.py": sys.executable,
    "sizes.py": sys.executable,
    "step_profile.py": sys.executable,
    "target_step.py": sys.executable,
    "train_mtp_variants.py": sys.executable,
}
LIBRARIES = {"eot_audio.py"}  # imported by a tool beside it; tested below
DATA = {"models.txt", "data"}  # the pinned model packages (bootstrap), the tools' inputs


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """`scripts/NAME ARGS` as a user runs it, this tree first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [TOOLS[name], str(SCRIPTS / name), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_every_tool_in_scripts_is_tested():
    present = {p.name for p in SCRIPTS.iterdir() if p.name != "__pycache__"}
    assert present == set(TOOLS) | LIBRARIES | DATA


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_tool_answers_help_with_its_usage(name):
    out = run_tool(name, "--help")
    assert out.returncode == 0, out.stderr
    assert name in out.stdout and ("usage:" in out.stdout or f"scripts/{name}" in out.stdout), out.stdout


def test_bootstrap_refuses_an_unknown_flag_before_installing_anything():
    out = run_tool("bootstrap", "--tset")
    assert out.returncode == 2
    assert out.stderr.strip() == "bootstrap: unknown argument --tset (see --help)"


def test_size_report_lists_long_modules_and_functions_and_never_fails(tmp_path):
    (tmp_path / "voice").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "voice" / "big.py").write_text(f"def long_one():\n{body}\n" + "y = 0\n" * 400)
    (tmp_path / "voice" / "small.py").write_text("def short():\n    return 1\n")
    out = run_tool("sizes.py", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1:] == ["    471  voice/big.py", "     71  voice/big.py:1 long_one()"]


def test_make_lint_prints_the_size_report():
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(PY) scripts/sizes.py" in recipe, recipe


@functools.cache
def _load(name: str):
    """A module of scripts/ (not a package) by file name."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_auc_counts_ordered_pairs_and_half_ties():
    auc = _load("eot_eval").auc
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.9], [0.5]) == 0.75


def test_required_silence_falls_linearly_from_max_to_min():
    rule = _load("eot_eval").required_silence_ms
    assert rule(0.01, 0.05, 0.5, 200, 1200) == 1200
    assert rule(0.9, 0.05, 0.5, 200, 1200) == 200
    assert rule(0.275, 0.05, 0.5, 200, 1200) == pytest.approx(700)


def test_bare_strips_only_the_closing_punctuation():
    bare = _load("eot_eval").bare
    assert bare("Can you tell me the name of the...") == "Can you tell me the name of the"
    assert bare("What is the capital of France?") == "What is the capital of France"
    assert bare("No, that's all.") == "No, that's all"


def test_rescoring_the_bundled_items_gives_the_bundled_summary(capsys):
    # the figures docs/benchmarks.md quotes are what the tool computes from the items it keeps
    scores = SCRIPTS / "data" / "eot" / "scores.json"
    assert _load("eot_eval").main(["--rescore", str(scores)]) == 0
    printed = json.loads(capsys.readouterr().out)
    kept = json.loads(scores.read_text())
    assert printed["summary"] == kept["summary"]
    close = printed["summary"]["llm_close:0"]  # docs/benchmarks.md: AUC 0.96/0.98
    assert (round(close["auc_cut"], 2), round(close["auc_tts"], 2)) == (0.96, 0.98)


def test_trailing_quiet_is_trimmed_to_the_last_loud_frame():
    trim = _load("eot_audio").trim_trailing_quiet
    loud = np.full(1600, 0.1, dtype=np.float32)
    audio = np.concatenate([loud, np.full(800, 1e-5, dtype=np.float32)])  # -100 dB: piper's own tail
    assert trim(audio).size == 1600
    assert trim(loud).size == 1600


def _parts(folder: Path, *contents: bytes) -> None:
    """`voice-gpu-turn.tar.xz.partNN` files in `folder` and their SHA256SUMS, as `gpu-turn --pack` writes them."""
    import hashlib

    folder.mkdir(exist_ok=True)
    sums = []
    for i, data in enumerate(contents):
        name = f"voice-gpu-turn.tar.xz.part{i:02d}"
        (folder / name).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / "SHA256SUMS").write_text("".join(sums))


def test_gpu_turn_names_the_missing_part_before_unpacking(tmp_path):
    _parts(tmp_path / "files", b"first", b"second", b"third")
    (tmp_path / "files" / "voice-gpu-turn.tar.xz.part01").unlink()
    out = run_tool("gpu-turn", "--files", str(tmp_path / "files"), "--work", str(tmp_path / "work"))
    assert out.returncode == 2
    assert out.stderr.strip().endswith(
        "gpu-turn: parts missing in " + str(tmp_path / "files") + ": voice-gpu-turn.tar.xz.part01"
    )
    assert not (tmp_path / "work" / "voice-gpu-turn").exists()


def test_gpu_turn_refuses_a_damaged_part(tmp_path):
    _parts(tmp_path / "files", b"first", b"second")
    (tmp_path / "files" / "voice-gpu-turn.tar.xz.part00").write_bytes(b"firsT")
    out = run_tool("gpu-turn", "--files", str(tmp_path / "files"), "--work", str(tmp_path / "work"))
    assert out.returncode == 2
    assert "voice-gpu-turn.tar.xz.part00: FAILED" in out.stderr
    assert out.stderr.strip().endswith("is damaged (above): copy it again")


def test_packed_wheels_are_stored_without_the_left_out_files_and_their_record_lines(tmp_path):
    import zipfile

    pack = _load("gpu_turn_pack")
    wheel = tmp_path / "piper_tts-1.8.0-cp39-abi3-manylinux_2_28_x86_64.whl"
    files = {
        "piper/voice.py": b"print('voice')\n" * 50,
        "piper/hebrew/nakdimon.onnx": b"\0" * 1000,
        "piper/tashkeel/model.onnx": b"\1" * 1000,
        "piper/tashkeel/__init__.py": b"x = 1\n",
    }
    record = "".join(f"{name},sha256=x,{len(data)}\n" for name, data in files.items())
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("piper_tts-1.8.0.dist-info/RECORD", record + "piper_tts-1.8.0.dist-info/RECORD,,\n")
    (tmp_path / "out").mkdir()
    pack.store_uncompressed(wheel, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / wheel.name) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert z.namelist() == ["piper/voice.py", "piper/tashkeel/__init__.py", "piper_tts-1.8.0.dist-info/RECORD"]
        assert z.read("piper/voice.py") == files["piper/voice.py"]
        assert z.read("piper_tts-1.8.0.dist-info/RECORD").decode().splitlines() == [
            f"piper/voice.py,sha256=x,{len(files['piper/voice.py'])}",
            "piper/tashkeel/__init__.py,sha256=x,6",
            "piper_tts-1.8.0.dist-info/RECORD,,",
        ]


def test_gpu_turn_report_carries_the_bench_config_and_rebuilt_weights(tmp_path):
    bench = {
        "machine": {"cpu": "Some CPU", "logical_cores": 16},
        "turns": 12,
        "answered": 12,
        "turn_gap_ms": {"p50": 240.0, "p90": 390.0, "max": 410.0},
        "stages_ms": {"endpoint": {"p50": 200.0, "p90": 260.0, "max": 300.0}},
        "predictions": {"released": 9, "late": 3, "dropped": 0, "none": 0},
        "hesitation": {"runs": 18, "split_turns": 0, "cut_ins": 0, "turn_gap_ms": {"p50": 250.0}, "by_pause_ms": {}},
    }
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    (tmp_path / "gguf_target.log").write_text("loading\n785e20b3abc\n")
    args = ["--config", str(ROOT / "configs" / "gpu.toml"), "--logs", str(tmp_path), "--command", "voice bench"]
    out = run_tool("gpu_turn_report.py", str(tmp_path / "bench.json"), *args)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["bench"] == bench
    assert report["config"]["llm"]["device"] == "cuda"
    assert report["target_sha256"] == "785e20b3abc"
    assert report["summary"]["turn_gap_ms"]["p50"] == 240.0
    assert report["summary"]["stages_ms"] == {"endpoint": {"p50": 200.0, "p90": 260.0}}
    assert (report["summary"]["hesitation"]["split_turns"], report["summary"]["hesitation"]["cut_ins"]) == (0, 0)
    assert report["machine"]["logical_cores"] == os.cpu_count()


def test_the_gpu_profile_that_gpu_turn_runs_puts_the_llm_on_cuda_and_sets_only_changes():
    import tomllib

    from voice.config import Config, load_config

    path = ROOT / "configs" / "gpu.toml"
    cfg, defaults = load_config(path), Config()
    assert (cfg.llm.device, cfg.models, cfg.decode.cuda_graphs) == ("cuda", defaults.models, True)
    for section, values in tomllib.loads(path.read_text()).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value
            assert getattr(getattr(defaults, section), key) != value, f"{section}.{key} repeats the default"
