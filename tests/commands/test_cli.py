import json
import subprocess
import sys

import numpy as np
import pytest
from fake_openai import REPLY, ChatServer, dead_url

from audio.wavio import write_wav
from commands.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "commands.cli", *args], capture_output=True, text=True)


def test_help_lists_only_built_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("models", "turn", "decode-bench"):
        assert cmd in out.stdout


def test_bad_input_is_one_line_error_without_traceback(tmp_path, capsys):
    assert main(["turn", str(tmp_path / "missing.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: audio file not found") and "Traceback" not in err
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    assert main(["turn", str(tmp_path / "bad.wav")]) == 2
    assert "not a PCM WAV" in capsys.readouterr().err
    assert main(["turn", "x.wav", "--set", "llm.max_new_tokens=lots"]) == 2
    assert "llm.max_new_tokens" in capsys.readouterr().err
    import wave

    with wave.open(str(tmp_path / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    assert main(["turn", str(tmp_path / "empty.wav")]) == 2
    assert "has no audio" in capsys.readouterr().err
    with wave.open(str(tmp_path / "huge.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(2 * 8000 * 601))
    assert main(["turn", str(tmp_path / "huge.wav")]) == 2
    assert "longer than 600 s" in capsys.readouterr().err
    with wave.open(str(tmp_path / "24bit.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(3), w.setframerate(16000)
        w.writeframes(bytes(3 * 1600))
    assert main(["turn", str(tmp_path / "24bit.wav")]) == 2
    assert "24-bit samples are not supported" in capsys.readouterr().err


def test_only_user_facing_errors_become_one_line_errors(tmp_path, capsys, monkeypatch):
    from commands import cli
    from commands.cli_args import DeviceError, UsageError
    from commands.smart_turn import SmartTurnNotInstalled
    from voice.errors import VoiceError
    from voice.tts import TTSError
    from web.client import ServerError
    from web.protocol import ProtocolError

    for cls in (UsageError, TTSError, SmartTurnNotInstalled, ServerError, ProtocolError):
        assert issubclass(cls, VoiceError)
    assert DeviceError in cli._user_errors()
    # a FileNotFoundError from a bug is not a user error: it keeps its traceback
    monkeypatch.setattr(cli, "cmd_turn", lambda args, cfg: open(tmp_path / "nowhere" / "x"))
    with pytest.raises(FileNotFoundError):
        main(["turn", "x.wav"])
    # a missing file the user named is one
    from voice.config import ConfigError, load_config
    from voice.llm import drafter_feature_layers

    with pytest.raises(ConfigError, match="decode.mtp_path: no MTP drafter"):
        drafter_feature_layers(load_config(None, [f"decode.mtp_path={tmp_path / 'no-head'}"]))


@pytest.mark.slow
def test_gemma4_configs_say_the_hub_models_cannot_be_downloaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty hub cache, whatever this machine has
    for size in ("e2b", "e4b"):
        assert main(["decode-bench", "--config", f"configs/gemma4-{size}.toml", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"cannot load 'google/gemma-4-{size.upper()}-it'" in err and "cannot download" in err
        assert "Traceback" not in err


def test_train_drafter_rejects_bad_feature_layers(capsys):
    with pytest.raises(SystemExit):
        main(["train-drafter", "--feature-layers", "ten"])
    assert "expected layer numbers" in capsys.readouterr().err
    assert main(["train-drafter", "--steps", "5"]) == 2
    assert "--steps must be at least 10" in capsys.readouterr().err


def openai_backend(url: str) -> list[str]:
    return ["--set", "llm.backend=openai", "--set", f"llm.base_url={url}"]


def test_commands_refuse_to_start_with_one_line_when_the_llm_server_is_down(tmp_path):
    """The server is checked before the models load: each command says why in one line and exits 2."""
    url = dead_url()
    wav = tmp_path / "q.wav"
    write_wav(wav, np.zeros(16000, np.float32), 16000)
    why = f"cannot reach the LLM server at {url} (connection refused): start it, or fix llm.base_url"
    for args, said in (
        (["turn", str(wav)], why),
        (["bench", "--json", "--audio", str(wav)], why),
        (["talk", "--input-wav", str(wav), "--output-wav", str(tmp_path / "out.wav")], why),
        (["serve", "--port", "0"], why),
        (["soak", "--clients", "1", "--turns", "1", "--storm", "0"], f"the server did not start: {why}"),
    ):
        out = run_cli(*args, *openai_backend(url))
        assert (out.returncode, out.stderr.splitlines()) == (2, [f"error: {said}"]), args


@pytest.mark.slow
def test_turn_answers_from_the_configured_backend(question_wav):
    srv = ChatServer()
    try:
        out = run_cli("turn", str(question_wav), "--json", *openai_backend(srv.url))
    finally:
        srv.close()
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["reply"] == "".join(REPLY)
    assert srv.requests[0]["messages"][-1] == {"role": "user", "content": result["transcript"]}


@pytest.mark.slow
def test_a_bench_whose_llm_server_fails_every_reply_exits_cleanly_with_one_line_per_failure(question_wav):
    """The exit used to abort (134: a worker thread still in a native call as the interpreter exited)."""
    srv = ChatServer(status=500)
    try:
        out = run_cli("bench", "--json", "--audio", str(question_wav), "--turns", "2", *openai_backend(srv.url))
    finally:
        srv.close()
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Traceback" not in out.stderr and "terminate called" not in out.stderr, out.stderr[-4000:]
    report = json.loads(out.stdout)
    assert (report["turns"], report["answered"]) == (2, 0)
    failed = [line for line in out.stderr.splitlines() if "event=turn_failed" in line]
    assert failed and all(f"the LLM server at {srv.url} failed the request (HTTP 500)" in line for line in failed)
    print(out.stderr)


def test_turn_answers_a_spoken_question(question_wav, tmp_path):
    out = run_cli("turn", str(question_wav), "--json", "--output-wav", str(tmp_path / "reply.wav"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert "capital of france" in result["transcript"].lower()
    assert "paris" in result["reply"].lower()
    assert (tmp_path / "reply.wav").stat().st_size > 10000
    assert result["total_ms"] >= result["llm_ms"] > 0


@pytest.mark.slow
def test_decode_bench_json_has_the_promised_keys(stack):
    out = run_cli("decode-bench", "--json", "--prompts", "1", "--max-new-tokens", "12")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"target", "drafter", "device", "prompts", "max_new_tokens", "runs", "speedup", "verify_cost_ms"} <= set(
        report
    )
    modes = [r["mode"] for r in report["runs"]]
    assert modes[0] == "greedy" and "adaptive" in modes and modes.count("fixed") == 4
    assert all(r["identical"] for r in report["runs"])
    assert {"1", "2", "4", "8"} <= set(report["verify_cost_ms"])
    assert {"adaptive_vs_greedy", "adaptive_vs_best_fixed"} <= set(report["speedup"])


@pytest.mark.slow
def test_bench_one_turn_json(stack, question_wav, tmp_path):
    out = run_cli("bench", "--json", "--audio", str(question_wav), "--turns", "1", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["turns"] == 1 and report["answered"] == 1
    stages = {s: report["stages_ms"][s]["p50"] for s in report["stages_ms"]}
    assert set(stages) == {"endpoint", "asr_final", "first_span", "first_audio"}
    # one turn: the p50 is that turn's gap (first audio as the bench received it), and every
    # stage the pipeline stamped lies between the end of speech and it (0.1: each is rounded)
    gap = report["results"][0]["turn_gap_ms"]
    assert report["turn_gap_ms"]["p50"] == pytest.approx(gap, abs=0.1) and gap > 0
    assert 0 <= stages["endpoint"] <= stages["first_audio"] and stages["asr_final"] <= stages["first_audio"]
    assert stages["first_span"] <= stages["first_audio"] <= gap + 0.1
    assert "capital of france" in report["results"][0]["transcript"].lower()
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_decode_bench_and_its_errors_need_none_of_the_voice_stacks_packages():
    """The GPU machine has torch and transformers only (scripts/gpu-bench): decode-bench, its
    machine report and the CLI's error path import nothing of websockets, soxr, piper or whisper."""
    import subprocess
    import sys

    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('websockets', 'soxr', 'piper', 'faster_whisper', 'ctranslate2', 'onnxruntime'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import commands.decode_bench, commands.decode_bench_synthetic, commands.machine
from commands.cli import _user_errors
_user_errors()
print('ok')
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
