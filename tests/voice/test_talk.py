import subprocess
import sys

import pytest


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "voice.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_bad_input_device_is_a_clear_error():
    out = run_cli("talk", "--input-device", "999")
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert "--input-wav" in out.stderr


def test_devices_lists_or_says_there_are_none():
    out = run_cli("devices")
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr
    assert out.stdout.strip() or out.stderr.startswith("error: ")


@pytest.mark.slow
def test_talk_with_a_wav_as_microphone(stack, question_wav, tmp_path):
    reply = tmp_path / "reply.wav"
    out = run_cli("talk", "--input-wav", str(question_wav), "--output-wav", str(reply))
    assert out.returncode == 0, out.stderr
    heard = [line for line in out.stdout.splitlines() if line.startswith("you:")]
    assert heard and "capital of france" in heard[0].lower(), out.stdout
    assert "paris" in out.stdout.lower() and "[turn gap " in out.stdout
    assert reply.stat().st_size > 20000
