import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from commands.bench import compare_report, report
from commands.hesitation import (
    HesitationClip,
    HesitationRun,
    classify,
    hesitation_report,
    insert_pause,
    quietest_point,
    run_result,
    word_boundary,
)
from commands.machine import parse_cpuinfo
from commands.turn_record import TurnRecord

RATE = 16000

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sve

processor\t: 1
Features\t: fp asimd evtstrm aes sve
"""


def test_cpuinfo_gives_model_cores_and_simd_flags():
    assert parse_cpuinfo(INTEL) == {
        "cpu": "Intel(R) Xeon(R) Platinum 8480+",
        "logical_cores": 2,
        "avx2": True,
        "avx512": True,
        "amx": True,
        "vnni": True,
    }
    assert parse_cpuinfo(EPYC) == {
        "cpu": "AMD EPYC",
        "logical_cores": 2,
        "avx2": True,
        "avx512": False,
        "amx": False,
        "vnni": False,
    }
    arm = parse_cpuinfo(ARM)
    assert arm["logical_cores"] == 2 and not any(arm[k] for k in ("avx2", "avx512", "amx", "vnni"))
    assert parse_cpuinfo("")["cpu"] is None


def record(gap_s: float | None, name: str = "q.wav") -> TurnRecord:
    r = TurnRecord(name, last_voiced_fed_t=100.0, first_audio=100.0 + gap_s if gap_s is not None else 0.0)
    if gap_s is not None:
        r.stamps = {"endpoint": 100.2, "asr_final": 100.25, "first_span": 100.3, "first_audio": 100.0 + gap_s}
        r.metrics = {"acceptance": 0.5, "mean_draft_len": 3.0}
    return r


def test_report_gives_each_turn_its_stages_after_the_bench_end_of_speech():
    out = report([record(0.4), record(None, "silent.wav")])
    assert out["turns"] == 2 and out["answered"] == 1
    assert out["results"][0]["stages_ms"] == {
        "endpoint": 200.0,
        "asr_final": 250.0,
        "first_span": 300.0,
        "first_audio": 400.0,
    }
    assert out["results"][1]["stages_ms"] == dict.fromkeys(("endpoint", "asr_final", "first_span", "first_audio"))
    assert out["stages_ms"]["endpoint"]["p50"] == 200.0


def test_report_gives_reply_lengths_per_turn_and_reply_audio_percentiles():
    turns = []
    for i, (audio_s, reply) in enumerate(
        [(4.0, "Paris is the capital."), (8.0, "Light scatters. Blue most."), (12.0, "It is about")]
    ):
        r = record(0.4, f"q{i}.wav")
        r.reply = reply
        r.metrics.update(
            reply_audio_s=audio_s,
            reply_tokens=10 * (i + 1),
            reply_sentences=i + 1,
            reply_end="budget" if i else "done",
            shortened=bool(i),
        )
        turns.append(r)
    out = report(turns)
    assert out["reply_audio_s"]["p50"] == 8.0 and out["reply_audio_s"]["p90"] == 11.2
    assert out["replies_shortened"] == 2 and out["replies_ending_a_sentence"] == 2
    first = out["results"][0]
    assert (first["reply_sentences"], first["reply_tokens"], first["reply_audio_s"], first["reply"]) == (
        1,
        10,
        4.0,
        "Paris is the capital.",
    )


def test_turn_through_a_server_reports_the_server_stage_figures():
    r = TurnRecord(
        "q.wav",
        last_voiced_fed_t=5.0,
        first_audio=5.6,
        metrics={
            "endpoint_ms": 310.0,
            "asr_final_ms": 320.0,
            "first_span_ms": 400.0,
            "first_audio_ms": 550.0,
            "acceptance": 0.4,
            "mean_draft_len": 2.0,
        },
    )
    assert r.stages_ms() == {"endpoint": 310.0, "asr_final": 320.0, "first_span": 400.0, "first_audio": 550.0}


def test_compare_ratio_is_main_p50_over_compared_p50():
    main = report([record(0.3), record(0.5), record(0.4)])
    compared = report([record(0.8), record(0.8)])
    out = compare_report(main, compared, ["turn.predictive=false"])
    assert out["set"] == ["turn.predictive=false"] and out["turn_gap_ms"]["p50"] == 800.0
    assert out["p50_ratio"] == 0.5
    assert compare_report(main, report([record(None)]), ["x.y=1"])["p50_ratio"] is None


# timeline of a hesitation run: the second half starts at 10.0 s, the question ends at 11.0 s
SECOND, END = 10.0, 11.0


def test_one_turn_after_the_question_is_neither_split_nor_cut_in():
    v = classify([("Which country has the most people?", 11.4)], [11.5], SECOND, END)
    assert (v.answered, v.split_turn, v.cut_in) == (1, False, False)
    assert v.turn_gap_ms == 500.0


def test_a_turn_committed_in_the_pause_is_split_even_without_audio():
    v = classify([("Which country has the", 9.8)], [], SECOND, END)
    assert v.split_turn and not v.cut_in and v.turn_gap_ms is None


def test_two_answered_turns_are_split_and_early_audio_is_a_cut_in():
    v = classify([("Which country has the", 9.8), ("most people?", 11.6)], [9.9, 11.7], SECOND, END)
    assert (v.answered, v.split_turn, v.cut_in) == (2, True, True)
    assert v.turn_gap_ms == 700.0  # the first reply starting after the end, not the cut-in


def test_reply_audio_before_the_last_word_is_a_cut_in_but_not_split():
    v = classify([("Which country has the most", 10.8)], [10.9], SECOND, END)
    assert v.cut_in and not v.split_turn and v.turn_gap_ms is None


def test_noise_finals_are_not_answered_turns():
    v = classify([("", 9.8), ("Which country has the most people?", 11.3)], [11.4], SECOND, END)
    assert (v.answered, v.split_turn) == (1, False)
    assert classify([], [], SECOND, END).answered == 0


def clip(pause_ms: int, name: str = "q00") -> HesitationClip:
    return HesitationClip(
        f"{name}-pause{pause_ms}",
        "Which country has the",
        "most people?",
        pause_ms,
        pause_at=16000,
        second_at=16000 + 16 * pause_ms,
        end_sample=40000,
        audio=np.zeros(48000, np.float32),
    )


def result(pause_ms: int, finals, starts, name: str = "q00") -> dict:
    fed = {"second_half": SECOND, "last_voiced": END, "audio_end": 12.0}
    return run_result(HesitationRun(clip(pause_ms, name), list(finals), list(starts), fed))


def test_hesitation_report_counts_by_pause():
    results = [
        result(400, [("Which country has the", 9.8), ("most people?", 11.5)], [9.9, 11.6]),
        result(700, [("Which country has the most people?", 11.3)], [11.4]),
        result(400, [("Which country has the most people?", 11.3)], [11.45], "q01"),
        result(900, [], []),
    ]
    out = hesitation_report(results)
    assert out["questions"] == 1 and out["runs"] == 4  # same words in q00 and q01 here
    assert (out["split_turns"], out["cut_ins"], out["unanswered"]) == (1, 1, 1)
    assert out["by_pause_ms"] == {
        "400": {"runs": 2, "split_turns": 1, "cut_ins": 1},
        "700": {"runs": 1, "split_turns": 0, "cut_ins": 0},
        "900": {"runs": 1, "split_turns": 0, "cut_ins": 0},
    }
    assert list(out["by_pause_ms"]) == ["400", "700", "900"]
    assert out["results"][0]["first_commit_ms"] == -200.0
    assert out["turn_gap_ms"]["p50"] == 450.0


def syllable(f0: float, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    phase = 2 * np.pi * f0 * np.arange(n) / RATE
    ramp = np.sin(np.linspace(0, np.pi / 2, RATE // 50)) ** 2
    envelope = np.concatenate([ramp, np.ones(n - 2 * len(ramp)), ramp[::-1]])
    return (0.2 * envelope * sum(np.sin(h * phase) / h for h in range(1, 10))).astype(np.float32)


def spoken(*parts: np.ndarray) -> np.ndarray:
    silence = np.zeros(RATE // 10, np.float32)
    return np.concatenate([silence, *parts, silence])


def test_word_boundary_finds_where_the_first_half_ends_in_the_whole_sentence():
    # alone, the first half's last syllable is drawn out (phrase-final); in the sentence it is not
    a, b, c, d, e = (
        lambda s: syllable(110, s),
        lambda s: syllable(160, s),
        lambda s: syllable(220, s),
        lambda s: syllable(290, s),
        lambda s: syllable(140, s),
    )
    first = spoken(a(0.18), b(0.15), c(0.30))
    second = spoken(d(0.17), e(0.22))
    sentence = spoken(a(0.18), b(0.15), c(0.20), d(0.17), e(0.22))
    junction = RATE // 10 + int(0.18 * RATE) + int(0.15 * RATE) + int(0.20 * RATE)
    assert abs(word_boundary(sentence, first, second) - junction) <= 0.010 * RATE


def test_quietest_point_and_pause_insertion():
    x = np.ones(16000, np.float32)
    x[8000:8100] = 0.0
    assert abs(quietest_point(x, 8300) - 8050) <= 80  # 5 ms steps
    paused = insert_pause(x, 8050, 700)
    assert len(paused) == len(x) + 11200
    assert not paused[8050 : 8050 + 11200].any() and paused[8049] == x[8049] and paused[8050 + 11200] == x[8050]
    assert np.array_equal(np.concatenate([paused[:8050], paused[8050 + 11200 :]]), x)


@pytest.mark.slow
def test_hesitation_audio_puts_the_pause_at_the_word_boundary(stack, tmp_path):
    from audio.wavio import read_wav
    from commands.hesitation import hesitation_audio
    from voice.config import load_config

    cfg = load_config()
    cfg = replace(cfg, models=replace(cfg.models, cache_dir=str(tmp_path)))
    clips = hesitation_audio(cfg, stack.tts, (400, 900), questions=2)
    assert [c.name for c in clips] == ["q00-pause400", "q00-pause900", "q01-pause400", "q01-pause900"]
    for c in clips:
        sentence = read_wav(tmp_path / "bench-hesitation" / f"{c.name[:3]}.wav")
        assert c.second_at - c.pause_at == 16 * c.pause_ms
        assert not c.audio[c.pause_at : c.second_at].any()  # exactly pause_ms of silence, there
        assert np.array_equal(np.concatenate([c.audio[: c.pause_at], c.audio[c.second_at :]]), sentence)
        assert 0.5 * RATE < c.pause_at < c.end_sample - c.pause_ms * 16 - 0.3 * RATE  # mid-sentence
        around = sentence[c.pause_at - 80 : c.pause_at + 80]
        assert np.sqrt(np.mean(around**2)) < 0.1 * np.abs(sentence).max()  # cut where it is quiet
        assert (tmp_path / "bench-hesitation" / f"{c.name}.wav").is_file()
    again = hesitation_audio(cfg, None, (400,), questions=1)  # from the cache: no piper needed
    assert again[0].pause_at == clips[0].pause_at and np.array_equal(again[0].audio, clips[0].audio)


@pytest.mark.slow
def test_bench_hesitation_only_json(stack):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "commands.cli",
            "bench",
            "--hesitation-only",
            "--pauses",
            "700",
            "--questions",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"cpu", "logical_cores", "avx2", "avx512", "amx", "vnni"} <= set(result["machine"])
    h = result["hesitation"]
    assert {"questions", "split_turns", "cut_ins", "by_pause_ms", "results"} <= set(h)
    assert h["questions"] == 1 and set(h["by_pause_ms"]) == {"700"} and h["by_pause_ms"]["700"]["runs"] == 1
    run = h["results"][0]
    assert {"finals", "answered", "split_turn", "cut_in", "turn_gap_ms"} <= set(run)
    assert "largest ocean" in " ".join(run["finals"]).lower()
    assert "turns" not in result  # --hesitation-only: no main set


def test_bench_replies_are_brief_and_end_on_a_sentence(stack):
    from voice.reply_policy import ends_sentence

    out = subprocess.run(
        [sys.executable, "-m", "commands.cli", "bench", "--turns", "4", "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["answered"] == 4 and set(result["reply_audio_s"]) == {"p50", "p90", "max"}
    for turn in result["results"]:  # includes "Why is the sky blue?" (27 s and cut mid-sentence before)
        assert ends_sentence(turn["reply"]), turn["reply"]
        assert 0 < turn["reply_audio_s"] <= 15 and turn["reply_sentences"] >= 1 and turn["reply_tokens"] > 0
    assert result["reply_audio_s"]["p50"] <= 10


def test_bench_through_a_server_that_is_gone_prints_its_json_and_one_line(tmp_path, capsys, monkeypatch):
    import json
    import socket

    import numpy as np

    import web.client
    from audio.wavio import write_wav
    from commands.cli import main

    monkeypatch.setattr(web.client, "OPEN_RETRY_DELAY_S", 0.0)
    write_wav(tmp_path / "q.wav", np.zeros(1600, np.float32), 16000)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        gone = f"ws://127.0.0.1:{s.getsockname()[1]}/ws"
    assert main(["bench", "--server", gone, "--audio", str(tmp_path / "q.wav"), "--json"]) == 2
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["turns"] == 0 and "went away" in result["server_lost"]
    assert err.startswith(f"error: the server at {gone} went away") and "after 0 of 1 turns" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("key", ["decode.block_weights=false", "llm.threads=1", "asr.threads=1", "models.llm=other"])
def test_compare_refuses_what_only_takes_effect_when_the_models_load(key):
    from commands.bench import check_compare
    from voice.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.")):
        check_compare(load_config(None, []), load_config(None, [key]))


def test_compare_takes_what_sessions_read():
    from commands.bench import check_compare
    from voice.config import load_config

    check_compare(load_config(None, []), load_config(None, ["turn.predictive=false", "asr.interval_ms=100"]))
