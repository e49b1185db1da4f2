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


@pytest.mark.parametrize(
    "override, message",
    [
        ("decode.nope=1", "decode.nope"),
        ("nosection.x=1", "nosection"),
        ("decode.max_draft=six", "decode.max_draft"),
        ("decode.max_draft=true", "decode.max_draft"),
        ("decodemax_draft=3", "section.key=value"),
    ],
)
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


def test_every_config_key_is_read_outside_the_config_module():
    """A key nothing reads does nothing when set (as `server.max_message_bytes` once did): each
    `section.key` must be read as `…section.key`, or as `.key` in a file that uses `.section`."""
    import dataclasses
    import re
    from pathlib import Path

    from voice.config import Config

    root = Path(__file__).resolve().parents[2]
    sources = [
        p.read_text() for d in ("voice", "web", "commands") for p in (root / d).rglob("*.py") if p.name != "config.py"
    ]
    unread = []
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(Config(), section.name)):
            direct = re.compile(rf"\b{section.name}\.{key.name}\b")
            loose, used = re.compile(rf"\.{key.name}\b"), re.compile(rf"\.{section.name}\b")
            if not any(direct.search(t) or (loose.search(t) and used.search(t)) for t in sources):
                unread.append(f"{section.name}.{key.name}")
    assert not unread, f"config keys nothing reads: {unread}"


def _parameter_defaults(fn) -> dict[str, object]:
    import inspect

    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize(
    "component, section",
    [
        ("voice.asr.WhisperASR", "asr"),
        ("voice.asr.NoSpeechRule", "asr"),
        ("voice.remote_llm.RemoteReplies", "llm"),
        ("audio.vad.Endpointer", "vad"),
    ],
)
def test_a_components_defaults_are_the_configs(component, section):
    """A component built without the config behaves as the default config: every constructor
    default named like a config key of its section has that key's default."""
    import dataclasses
    import importlib

    from voice.config import Config

    module, name = component.rsplit(".", 1)
    defaults = _parameter_defaults(getattr(importlib.import_module(module), name))
    keys = {f.name: f.default for f in dataclasses.fields(getattr(Config(), section))}
    shared = sorted(set(defaults) & set(keys))
    assert shared, f"{component} shares no parameter with [{section}]"
    assert {k: defaults[k] for k in shared} == {k: keys[k] for k in shared}


def test_turn_settings_of_the_default_config_are_turntakings_defaults():
    from voice.config import Config
    from voice.pipeline import turn_settings
    from voice.turntaking import TurnSettings

    assert turn_settings(Config()) == TurnSettings()
