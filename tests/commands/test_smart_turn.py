"""Smart Turn, the audio end-of-turn score that scripts/eot_eval.py compares with the LLM's."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from commands import smart_turn
from commands.smart_turn import SmartTurn, SmartTurnNotInstalled, last_window, model_path

ROOT = Path(__file__).resolve().parents[2]


def test_last_window_pads_at_the_start_so_the_turn_ends_at_the_end():
    audio = np.arange(1, 6, dtype=np.float32)
    window = last_window(audio, 8)
    assert window.tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    assert window.dtype == np.float32


def test_last_window_keeps_the_most_recent_samples():
    assert last_window(np.arange(10, dtype=np.float32), 3).tolist() == [7, 8, 9]
    assert last_window(np.arange(3, dtype=np.float32), 3).tolist() == [0, 1, 2]


def test_missing_package_error_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smart_turn.importlib.metadata, "distribution", missing)
    with pytest.raises(SmartTurnNotInstalled, match=r"pip install --no-deps pipecat-ai==[\d.]+ \(scripts/models.txt\)"):
        model_path()


def test_models_txt_pins_the_version_smart_turn_expects():
    pins = (ROOT / "scripts" / "models.txt").read_text().split()
    assert f"{smart_turn.PACKAGE}=={smart_turn.PACKAGE_VERSION}" in pins


# ---- with models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def turn_model():
    try:
        model_path()
    except SmartTurnNotInstalled as err:
        pytest.skip(str(err))
    return SmartTurn()


def _spoken(stack, text: str, silence_ms: int = 200) -> np.ndarray:
    from audio.wavio import pcm16_to_float, resample

    audio = resample(pcm16_to_float(stack.tts.synthesize_all(text, deterministic=True)), stack.tts.rate_hz, 16000)
    return np.concatenate([audio, np.zeros(16 * silence_ms, dtype=np.float32)])


@pytest.mark.slow
def test_smart_turn_hears_a_finished_question_as_more_complete_than_a_cut_one(stack, turn_model):
    # measured (scripts/eot_eval.py): 0.98 vs 0.01, the widest margin of the spoken pairs
    complete = turn_model.prob(_spoken(stack, "What time is it in Tokyo?"))
    cut = turn_model.prob(_spoken(stack, "What time is it in"))
    assert 0.0 <= cut < complete <= 1.0
    assert complete - cut > 0.5


@pytest.mark.slow
def test_smart_turn_features_match_pipecats_own_extractor(turn_model):
    # pipecat computes the model's input with a vendored numpy copy of WhisperFeatureExtractor;
    # an upgrade that changed it would change what the model sees
    path = turn_model.path.parents[1] / "_whisper_features.py"
    spec = importlib.util.spec_from_file_location("pipecat_whisper_features", path)
    features = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(features)
    audio = np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.1
    ours = turn_model.features(audio)
    theirs = features.compute_whisper_log_mel_features(last_window(audio, 8 * 16000))
    assert ours.shape == theirs.shape == (80, 800)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
