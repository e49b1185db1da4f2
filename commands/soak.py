"""`voice soak`: concurrent spoken sessions against a running server, and a disconnect storm.

In: a server URL, concurrency levels, turns per client. Out: JSON per level — turn-gap
p50/p90, answered and lost turns, errors, why turns were slow (`why`: the stage each turn
waited longest in, each talker's worst gap, the worst turn's split) and the server's queue
depths sampled during the level (`queues`) — plus the server's RSS, task and thread counts
(from its `/stats`) before and after, so leaks show. Traffic goes only to the given
server (use a loopback address). A turn cut by a draining worker (1001) or a dropped
connection (a worker killed) is said again on a new session; a server or balancer that stops
accepting connections ends the run with the counts so far and `server_lost` saying why.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from pathlib import Path

from audio.wavio import float_to_pcm16, read_wav
from commands.summary import percentiles
from commands.turn_record import STAGES, spoken_turn
from web.client import ServerGoingAwayError, ServerLostError, SessionDroppedError, auth_headers, open_session
from web.protocol import MessageType


def server_stats(ws_url: str, token: str | None = None) -> dict:
    """The server's `/stats` (sessions, tasks, threads, rss_bytes); `ServerLostError` when it does not answer 200.
    `token`: the server's shared secret."""
    http = ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rsplit("/ws", 1)[0]
    request = urllib.request.Request(f"{http}/stats", headers=auth_headers(token))
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:  # a balancer with no worker up answers 503
        raise ServerLostError(
            f"the server at {ws_url} answered /stats with HTTP {err.code}: is any worker up?"
        ) from None
    except OSError as err:  # refused, reset, timed out: the server or the balancer is gone
        raise ServerLostError(
            f"the server at {ws_url} went away ({getattr(err, 'reason', err)}); is it still running?"
        ) from None


TURN_RETRIES = 3  # a turn cut by a draining worker (1001) or a dropped connection is said again this often


async def _client(
    url: str, paths: list[Path], turns: int, offset: int, token: str | None = None
) -> tuple[list[dict], int, list[str], int, str | None]:
    """One talker's turns: the answered ones' stage times (gap last), lost turns, errors, turns said
    again on a new session because the old one was cut (1001 or dropped), and why the server was lost
    (None: it was not; the talker stops there and its remaining turns count as lost)."""
    answered, lost, errors, retried = [], 0, [], 0
    ws = None
    try:
        for i in range(turns):
            path = paths[(offset + i) % len(paths)]
            record = None
            for _ in range(TURN_RETRIES + 1):
                try:
                    ws = ws if ws is not None else await open_session(url, token=token)
                    record = await spoken_turn(ws, path)
                except (ServerGoingAwayError, SessionDroppedError):
                    ws = None
                    retried += 1
                    continue
                except ServerLostError as err:
                    return answered, lost + turns - i, errors, retried, str(err)
                except Exception as err:  # a refused session or a server error loses the turn
                    errors.append(f"{type(err).__name__}: {err}")
                    ws = await _drop(ws)
                break
            else:
                errors.append(f"turn {i + 1}: every worker went away {TURN_RETRIES + 1} times")
            if record is None:  # its error is already listed
                lost += 1
            elif problem := _turn_problem(record):
                lost += 1
                errors.append(problem)
            else:
                answered.append(
                    {
                        **record.stages_ms(),
                        "llm_start": record.metrics.get("llm_start_ms"),
                        "turn_gap": record.turn_gap_ms,
                        "client": offset,
                    }
                )
    finally:
        if ws is not None:
            await ws.close()
    return answered, lost, errors, retried, None


async def _drop(ws):
    """Close a session after an error (the next turn opens a new one); returns None."""
    if ws is not None:
        await ws.close()
    return None


def _turn_problem(record) -> str | None:
    """Why a turn does not count as answered (None: it does)."""
    if not record.last_voiced_fed_t:  # the server ended the turn before the question did
        return f"turn ended before the speech did: heard {record.transcript!r}, replied {record.reply!r}"
    if record.turn_gap_ms is None:
        return f"no reply audio: heard {record.transcript!r}"
    return None


WAITS = ("endpoint", "llm", "tts")  # a turn's gap, split where it waited: see `turn_waits`


def turn_waits(stages: dict) -> dict[str, float]:
    """Where one answered turn's gap went, in ms: `endpoint` = end of speech → endpoint; `llm` =
    endpoint → first reply text (0 if the text came first, a prepared reply); `tts` = the later
    of those → first audio. The three add up to the gap."""
    endpoint = max(0.0, stages.get("endpoint") or 0.0)
    text = max(endpoint, stages.get("first_span") or endpoint)
    audio = max(text, stages["first_audio"])
    return {"endpoint": round(endpoint, 1), "llm": round(text - endpoint, 1), "tts": round(audio - text, 1)}


def why_slow(turns: list[dict]) -> dict:
    """Per level: how many turns waited longest in each stage, each talker's worst gap, and the
    worst turn with its split (who waited, and where)."""
    if not turns:
        return {"waited_longest": {}, "worst_gap_by_client": {}, "worst_turn": None}
    counts = dict.fromkeys(WAITS, 0)
    worst_by_client: dict[int, float] = {}
    for t in turns:
        waits = turn_waits(t)
        counts[max(WAITS, key=waits.__getitem__)] += 1
        worst_by_client[t["client"]] = max(worst_by_client.get(t["client"], 0.0), round(t["turn_gap"], 1))
    worst = max(turns, key=lambda t: t["turn_gap"])
    return {
        "waited_longest": counts,
        "worst_gap_by_client": {str(c): g for c, g in sorted(worst_by_client.items())},
        "worst_turn": {"client": worst["client"], "turn_gap": round(worst["turn_gap"], 1), **turn_waits(worst)},
    }


def queue_summary(samples: list[dict]) -> dict:
    """Queue depths sampled from `/stats` during a level: mean and max per queue, and the samples
    (seconds into the level, depth per queue)."""
    names = sorted({k for s in samples for k in s["queues"]})
    out: dict = {}
    for name in names:
        depths = [s["queues"][name] for s in samples if name in s["queues"]]
        out[name] = {"mean": round(sum(depths) / len(depths), 2), "max": max(depths)}
    out["samples"] = [{"t": s["t"], **s["queues"]} for s in samples]
    return out


async def sample_queues(url: str, samples: list[dict], token: str | None, every_s: float = 0.5) -> None:
    """Append the server's queue depths to `samples` every `every_s` until cancelled."""
    t0 = time.perf_counter()
    while True:
        try:
            stats = await asyncio.to_thread(server_stats, url, token)
        except ServerLostError:
            return
        if "queues" in stats:
            samples.append({"t": round(time.perf_counter() - t0, 2), "queues": stats["queues"]})
        await asyncio.sleep(every_s)


def decode_delta(start: dict | None, end: dict | None) -> dict:
    """What the server's decode scheduler did between two `/stats`: sequences per step (a
    histogram) and reply tokens per second of decoding time."""
    if not start or not end:
        return {"batch_sizes": None, "decode_tokens_per_s": None}
    sizes = {k: v - start["batch_sizes"].get(k, 0) for k, v in end["batch_sizes"].items()}
    busy = end["busy_s"] - start["busy_s"]
    return {
        "batch_sizes": {k: v for k, v in sizes.items() if v},
        "decode_tokens_per_s": round((end["tokens_out"] - start["tokens_out"]) / busy, 1) if busy > 0 else None,
    }


async def settle(url: str, baseline: dict, timeout_s: float = 10.0, token: str | None = None) -> dict:
    """Server stats once sessions and tasks are back to the baseline (or after the timeout)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        stats = await asyncio.to_thread(server_stats, url, token)
        if (
            stats["sessions"] <= baseline["sessions"] and stats["tasks"] <= baseline["tasks"]
        ) or time.perf_counter() > deadline:
            return stats
        await asyncio.sleep(0.5)


async def soak(
    url: str, paths: list[Path], levels: list[int], turns: int, warmup: bool = True, token: str | None = None
) -> dict:
    """Run each concurrency level; report gaps, losses, retried turns and server resources.

    `before` is read after a warm-up of one turn per client of the largest level (unless
    `warmup` is False), so first-use allocations (model buffers, onnxruntime arenas sized by
    the longest phrase so far) are not counted as growth. `/stats` is read only when `url`
    reaches a worker that has it (through a balancer it is one worker's figures). A server that
    goes away ends the run: the levels so far (the cut one with its counts, no server figures)
    and `server_lost`, why.
    """
    out: dict = {"server": url, "turns_per_client": turns, "warmup_answered": 0, "before": None, "levels": []}
    try:
        await _run_levels(url, paths, levels, turns, warmup, out, token)
    except ServerLostError as err:
        out["server_lost"] = str(err)
    levels_done = out["levels"]
    out["after"] = levels_done[-1]["server_after"] if levels_done else out["before"]
    return out


async def _run_levels(
    url: str, paths: list[Path], levels: list[int], turns: int, warmup: bool, out: dict, token: str | None = None
) -> None:
    """`soak`'s work, written into `out` as it goes (so a lost server leaves the counts so far)."""
    warm = await asyncio.gather(*(_client(url, paths, 1, i, token) for i in range(max(levels)))) if warmup else []
    out["warmup_answered"] = sum(len(r[0]) for r in warm)
    _raise_if_lost(warm)
    before = out["before"] = await settle(url, {"sessions": 0, "tasks": 1 << 30}, token=token)
    for n in levels:
        t0 = time.perf_counter()
        start = await asyncio.to_thread(server_stats, url, token)
        samples: list[dict] = []
        sampler = asyncio.ensure_future(sample_queues(url, samples, token))
        try:
            results = await asyncio.gather(*(_client(url, paths, turns, i, token) for i in range(n)))
        finally:
            sampler.cancel()
        lost_server = any(r[4] for r in results)
        after = None if lost_server else await settle(url, before, token=token)
        turns_done = [t for r in results for t in r[0]]
        out["levels"].append(
            {
                "clients": n,
                "turns": n * turns,
                "answered": len(turns_done),
                "lost": sum(r[1] for r in results),
                "errors": [e for r in results for e in r[2]][:10],
                "retried": sum(r[3] for r in results),
                "turn_gap_ms": percentiles([t["turn_gap"] for t in turns_done]),
                "stages_ms": {
                    s: percentiles([t[s] for t in turns_done if t[s] is not None]) for s in ("llm_start", *STAGES)
                },
                "why": why_slow(turns_done),
                "queues": queue_summary(samples),
                "wall_s": round(time.perf_counter() - t0, 1),
                **decode_delta(start.get("decode"), after and after.get("decode")),
                "rss_mb": round(after["rss_bytes"] / 2**20, 1) if after else None,
                "server_after": after,
            }
        )
        _raise_if_lost(results)


def _raise_if_lost(results: list[tuple]) -> None:
    """`ServerLostError` with the first talker's reason, if one lost the server."""
    if reason := next((r[4] for r in results if r[4]), None):
        raise ServerLostError(reason)


async def disconnect_storm(url: str, path: Path, clients: int, seed: int = 0, token: str | None = None) -> dict:
    """Clients that start talking or ask a typed question and vanish at a random moment."""
    rng = random.Random(seed)
    audio = read_wav(path)
    before = await asyncio.to_thread(server_stats, url, token)

    async def one(i: int) -> None:
        ws = await open_session(url, token=token)
        if i % 2:
            await ws.send(json.dumps({"type": MessageType.TEXT, "text": "Tell me a fun fact about octopuses."}))
        else:
            for k in range(0, len(audio), 320):
                await ws.send(float_to_pcm16(audio[k : k + 320]).tobytes())
                await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # during decoding or audio streaming
        ws.transport.abort()  # no close handshake: a dropped network

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    after = await settle(url, before, timeout_s=30.0, token=token)
    return {"clients": clients, "before": before, "after": after, "settle_s": round(time.perf_counter() - t0, 1)}
