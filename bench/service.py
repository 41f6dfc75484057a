"""Service benchmarks: loopback load, the embedding link, time from end of speech to first token.

    python bench/service.py [--quick] [--sessions 20] [--seconds 60] [--json]

1. Loopback load: N sessions stream S seconds of audio each at real speed (100 ms appends) and
   ask three questions at 1/3, 2/3 and the end; reports lost chunks (encoded clips the engine
   never prefilled) and p50 / p99 time from response.create to the first text delta.
2. Link: EmbeddingChunk throughput (MB/s) over a websockets loopback link, and the link's share of
   end-to-end time: the same stream-and-ask run through the in-process queue and over the link.
3. End of speech to first answer token with server VAD (energy): from the moment the last speech
   audio was sent (silence follows in real time) to the first delta; includes the VAD's
   silence_duration_ms.

The server runs the tiny random Omni checkpoint of the tests (the bundled default model is
text-only: it takes no audio); figures are noisy on a shared CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hf_oracle  # noqa: E402

hf_oracle.prepare()

import torch  # noqa: E402
import websockets  # noqa: E402

from app.link import LinkLimits, connect_link, pack, serve_link  # noqa: E402
from app.realtime import Limits  # noqa: E402
from app.server import ServerConfig, create_app  # noqa: E402
from fusion.stream import EmbeddingChunk  # noqa: E402
from service_fixtures import RunningServer, events_until, pcm16  # noqa: E402


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


async def one_session(url: str, seconds: float, questions: int = 3) -> dict:
    ttft = []
    async with websockets.connect(url, max_size=None) as ws:
        await events_until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        audio = pcm16(seconds)
        step = 2400 * 2                         # 100 ms of 24 kHz PCM16
        marks = {int(len(audio) * (k + 1) / questions) // step * step for k in range(questions)}
        start = time.monotonic()
        for i, k in enumerate(range(0, len(audio), step)):
            delay = start + i * 0.1 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(audio[k:k + step]).decode()}))
            if k + step in marks or (k + step >= len(audio) and len(ttft) < questions):
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                t0 = time.perf_counter()
                await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
                first = None
                while True:
                    e = json.loads(await ws.recv())
                    if e["type"] == "response.output_text.delta" and first is None:
                        first = time.perf_counter() - t0
                    if e["type"] == "error":
                        raise RuntimeError(e)
                    if e["type"] == "response.done":
                        break
                ttft.append(first)
    return {"ttft": ttft}


def load_test(model: Path, sessions: int, seconds: float) -> dict:
    srv = RunningServer(create_app(ServerConfig(model_dir=model, vad="energy", limits=Limits(max_sessions=sessions + 2))))
    try:
        async def main():
            return await asyncio.gather(*(one_session(srv.url, seconds) for _ in range(sessions)))
        t = time.perf_counter()
        results = asyncio.run(main())
        wall = time.perf_counter() - t
        enc = srv.state.encoder_service
        stats = srv.call(srv.state.engine.stats())
        ttft = [x for r in results for x in r["ttft"] if x is not None]
        return {"sessions": sessions, "seconds": seconds, "wall_s": round(wall, 1),
                "chunks_encoded": enc.chunks_sent, "chunks_prefilled": stats["prefilled_chunks"],
                "lost_chunks": enc.chunks_sent - stats["prefilled_chunks"],
                "ttft_p50_ms": round(1000 * pct(ttft, 50), 1), "ttft_p99_ms": round(1000 * pct(ttft, 99), 1),
                "answers": len(ttft)}
    finally:
        srv.stop()


def link_throughput(hidden: int = 2048, tokens: int = 256, n: int = 200) -> dict:
    chunk = EmbeddingChunk("s", "audio", 0.0, 2.0, "", torch.randn(tokens, hidden))
    size = len(pack(chunk))

    async def main():
        got = asyncio.Event()
        count = 0

        async def on_connect(end):
            nonlocal count
            while count < n:
                await end.recv()
                count += 1
            got.set()
        server = await serve_link(on_connect, "127.0.0.1", 0, LinkLimits())
        port = server.sockets[0].getsockname()[1]
        end = await connect_link(f"ws://127.0.0.1:{port}")
        t = time.perf_counter()
        for _ in range(n):
            await end.send(chunk)
        await got.wait()
        dt = time.perf_counter() - t
        await end.close()
        server.close()
        return dt
    dt = asyncio.run(main())
    return {"chunk_bytes": size, "chunks": n, "MB_per_s": round(n * size / dt / 1e6, 1),
            "ms_per_chunk": round(1000 * dt / n, 3)}


def link_share(model: Path, seconds: float = 4.0, repeats: int = 3) -> dict:
    import subprocess

    async def flow(url):
        t = time.perf_counter()
        async with websockets.connect(url, max_size=None) as ws:
            await events_until(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
            audio = pcm16(seconds)
            for k in range(0, len(audio), 9600):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(audio[k:k + 9600]).decode()}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
            await events_until(ws, "response.done")
        return time.perf_counter() - t

    one = RunningServer(create_app(ServerConfig(model_dir=model, vad="energy")))
    try:
        t_one = min(asyncio.run(flow(one.url)) for _ in range(repeats))
    finally:
        one.stop()
    two = RunningServer(create_app(ServerConfig(model_dir=model, vad="energy", in_process_encoder=False, link_port=0)))
    enc = subprocess.Popen([sys.executable, "-m", "app", "encoder", "--connect", f"ws://127.0.0.1:{two.state.link_port}",
                            "--model", str(model), "--name", "bench"], cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        while not two.state.pool.links:
            time.sleep(0.1)
        t_two = min(asyncio.run(flow(two.url)) for _ in range(repeats))
    finally:
        enc.kill()
        enc.wait()
        two.stop()
    return {"in_process_s": round(t_one, 3), "over_link_s": round(t_two, 3),
            "link_share": round(max(0.0, t_two - t_one) / t_two, 4), "target": "< 5%"}


def speech_to_first_token(model: Path, repeats: int = 3) -> dict:
    import numpy as np
    srv = RunningServer(create_app(ServerConfig(model_dir=model, vad="energy")))
    try:
        async def once():
            async with websockets.connect(srv.url, max_size=None) as ws:
                await events_until(ws, "session.created")
                await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}}}))
                speech = pcm16(1.0)
                silence = np.zeros(24000 // 2, "<i2").tobytes()
                first = asyncio.get_running_loop().create_future()

                async def reader():
                    while True:
                        e = json.loads(await ws.recv())
                        if e["type"] == "response.output_text.delta" and not first.done():
                            first.set_result(time.perf_counter())
                        if e["type"] == "response.done":
                            return
                read = asyncio.create_task(reader())
                end_of_speech = None
                for piece in (speech, silence):
                    for k in range(0, len(piece), 4800):
                        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                                  "audio": base64.b64encode(piece[k:k + 4800]).decode()}))
                        await asyncio.sleep(0.1)
                    end_of_speech = end_of_speech or time.perf_counter() - 0.1
                dt = await first - end_of_speech
                await read
                return dt
        xs = [asyncio.run(once()) for _ in range(repeats)]
        return {"ms_from_end_of_speech": round(1000 * statistics.median(xs), 1), "silence_duration_ms": 300}
    finally:
        srv.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 sessions of 6 s (a smoke run)")
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.sessions, args.seconds = 4, 6.0
    from omni_builders import build_omni_checkpoint
    with tempfile.TemporaryDirectory() as d:
        model = Path(d)
        build_omni_checkpoint(model)
        out = {"link_throughput": link_throughput(n=50 if args.quick else 200),
               "link_share": link_share(model, repeats=2 if args.quick else 3),
               "speech_to_first_token": speech_to_first_token(model, repeats=1 if args.quick else 3),
               "load": load_test(model, args.sessions, args.seconds)}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
