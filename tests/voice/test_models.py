import pytest

from voice.config import ModelsConfig
from voice.models import ModelNotReady, cache_dir, list_models, llm_path, package_dir, whisper_path


def test_missing_package_says_how_to_fix():
    with pytest.raises(ModelNotReady, match="not installed: run `scripts/bootstrap`"):
        package_dir("no_such_model_package")


def test_unprepared_models_say_how_to_fix(tmp_path):
    cfg = ModelsConfig(cache_dir=str(tmp_path))
    with pytest.raises(ModelNotReady, match="voice models prepare"):
        whisper_path(cfg)
    with pytest.raises(ModelNotReady, match="voice models prepare"):
        llm_path(cfg)
    rows = {r.name: r.status for r in list_models(cfg)}
    assert rows == {"asr": "not prepared", "tts": "ready", "llm": "not prepared"}


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VOICE_CACHE", str(tmp_path))
    assert cache_dir(ModelsConfig()) == tmp_path
    assert cache_dir(ModelsConfig(cache_dir="/x")) == __import__("pathlib").Path("/x")
