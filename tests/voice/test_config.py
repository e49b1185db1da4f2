import pytest

from voice.config import ConfigError, load_config


def test_default_config_loads_offline_embedded_models():
    cfg = load_config()
    assert cfg.models.llm == "embedded" and cfg.server.host == "127.0.0.1"
    assert cfg.decode.drafter in ("ngram", "mtp")


def test_set_overrides_are_typed():
    cfg = load_config(None, ["decode.max_draft=6", "llm.temperature=0.7", "server.allowed_origins=a,b"])
    assert cfg.decode.max_draft == 6 and cfg.llm.temperature == 0.7
    assert cfg.server.allowed_origins == ("a", "b")


@pytest.mark.parametrize("override, message", [
    ("decode.nope=1", "decode.nope"),
    ("nosection.x=1", "nosection"),
    ("decode.max_draft=six", "decode.max_draft"),
    ("decode.max_draft=true", "decode.max_draft"),
    ("decodemax_draft=3", "section.key=value"),
])
def test_bad_override_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[decode]\nmax_draft = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    bad.write_text("[vad]\nthreshold = 'high'\n")
    with pytest.raises(ConfigError, match="vad.threshold"):
        load_config(bad)
