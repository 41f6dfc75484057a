"""A small asyncio client of WS /v1/realtime: stream a file as if it were live, or the microphone,
ask questions while it streams, and print each answer with its timestamps.

    python -m app.client clip.mp4 --ask "What happened?" [--ask-at 10:"And now?"] [--speed 4]
    python -m app.client --mic --ask "What did I say?" --seconds 10

A file's audio goes out as PCM16 at 24 kHz in 100 ms pieces and its video as JPEG frames at
`--fps`, interleaved on the media clock, at `--speed` times real time (0: as fast as possible).
The microphone is read through PyAV (ALSA or PulseAudio on Linux, AVFoundation on macOS).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import sys
import time

import numpy as np


def _jpeg(frame) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(frame.numpy()).save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def _pcm(samples) -> str:
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return base64.b64encode((x * 32767).astype("<i2").tobytes()).decode()


def file_events(path: str, fps: float):
    """(media time in s, event) of a file's audio and video, in time order."""
    from encoders.media import iter_audio, iter_video_frames, probe
    info = probe(path)
    streams = []
    if info.has_audio:
        streams.append(((k * 0.1, {"type": "input_audio_buffer.append", "audio": _pcm(x)})
                        for k, x in enumerate(iter_audio(path, 0.1, sample_rate=24000))))
    if info.has_video:
        streams.append(((t, {"type": "input_image_buffer.append", "image": _jpeg(f), "timestamp_ms": int(t * 1000)})
                        for t, f in iter_video_frames(path, fps=fps)))
    if info.kind == "image":
        with open(path, "rb") as f:
            url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
        yield 0.0, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_image", "image_url": url}]}}
        return
    import heapq
    yield from heapq.merge(*streams, key=lambda te: te[0])


def mic_events(seconds: float):
    """(time, append event) from the default microphone, 100 ms at a time."""
    import av
    fmt, dev = {"darwin": ("avfoundation", ":0")}.get(sys.platform, ("pulse" if os.environ.get("PULSE_SERVER") or
                                                                     os.path.exists("/run/user") else "alsa", "default"))
    container = av.open(dev, format=fmt)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=24000)
    got, t = [], 0.0
    for frame in container.decode(audio=0):
        for f in resampler.resample(frame):
            got.append(f.to_ndarray().reshape(-1))
        have = sum(len(g) for g in got)
        if have >= 2400:
            x = np.concatenate(got)
            got = [x[2400:]]
            yield t, {"type": "input_audio_buffer.append", "audio": _pcm(x[:2400])}
            t += 0.1
            if t >= seconds:
                return


class Printer:
    def __init__(self, out=sys.stdout):
        self.out, self.text = out, ""

    def event(self, e: dict) -> bool:
        """Print what matters; True when an answer ended."""
        t = e["type"]
        if t == "response.created":
            self.text = ""
            print("\n>>> ", end="", file=self.out, flush=True)
        elif t == "response.output_text.delta":
            self.text += e["delta"]
            print(e["delta"], end="", file=self.out, flush=True)
        elif t == "response.output_text.annotation.added":
            a = e["annotation"]
            print(f" [{a['start_ms'] / 1000:.2f}-{a['end_ms'] / 1000:.2f} s]", end="", file=self.out, flush=True)
        elif t == "response.done":
            r = e["response"]
            u = r.get("usage") or {}
            print(f"\n<<< {r['status']}, {u.get('output_tokens')} tokens, first token after "
                  f"{u.get('time_to_first_token_ms')} ms", file=self.out, flush=True)
            return True
        elif t == "error":
            print(f"\n[error {e['error']['code']}: {e['error']['message']}]", file=self.out, flush=True)
        elif t == "media.dropped":
            print(f"\n[{e['dropped']} frame(s) dropped: the server is behind]", file=self.out, flush=True)
        return False


async def run(url: str, events, asks: list[tuple[float | None, str]], speed: float, api_key: str | None = None,
              max_tokens: int = 256, printer: Printer | None = None) -> list[str]:
    """Stream `events` ((time, event) pairs) at `speed`, asking each question at its time (None:
    at the end); returns the answers' texts."""
    import websockets
    printer = printer or Printer()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    answers: list[str] = []
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        created = json.loads(await ws.recv())
        if created["type"] == "error":
            raise SystemExit(f"error: {created['error']['message']}")
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["text"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}}}}))
        done = asyncio.Queue()

        async def reader():
            async for raw in ws:
                e = json.loads(raw)
                if printer.event(e):
                    answers.append(printer.text)
                    done.put_nowait(e)

        read = asyncio.create_task(reader())
        pending = sorted(((t if t is not None else float("inf")), q) for t, q in asks)
        start = time.monotonic()
        audio_since_commit = 0.0

        async def ask(q):
            nonlocal audio_since_commit
            if audio_since_commit >= 0.1:
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                audio_since_commit = 0.0
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": q}]}}))
            await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": max_tokens}}))
            await done.get()

        for t, event in events:
            while pending and pending[0][0] <= t:
                await ask(pending.pop(0)[1])
            if speed > 0:
                delay = start + t / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(json.dumps(event))
            if event["type"] == "input_audio_buffer.append":
                audio_since_commit += 0.1
        for _, q in pending:
            await ask(q)
        read.cancel()
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.client", description=__doc__.split("\n\n")[0])
    p.add_argument("file", nargs="?", help="an audio, video or image file to stream as if live")
    p.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    p.add_argument("--seconds", type=float, default=10.0, help="microphone: how long to listen")
    p.add_argument("--url", default="ws://127.0.0.1:7860/v1/realtime")
    p.add_argument("--api-key", default=os.environ.get("OMNISTREAM_API_KEY"))
    p.add_argument("--ask", action="append", default=[], help="a question asked at the end (repeatable)")
    p.add_argument("--ask-at", action="append", default=[], metavar="SECONDS:TEXT",
                   help="a question asked when the stream reaches SECONDS (repeatable)")
    p.add_argument("--speed", type=float, default=1.0, help="times real time (0: as fast as possible)")
    p.add_argument("--fps", type=float, default=1.0, help="video frames a second")
    p.add_argument("--max-tokens", type=int, default=256)
    args = p.parse_args(argv)
    if bool(args.file) == args.mic:
        p.error("give a file or --mic")
    asks = [(None, q) for q in args.ask]
    for item in args.ask_at:
        t, _, q = item.partition(":")
        try:
            asks.append((float(t), q))
        except ValueError:
            p.error(f"--ask-at {item!r}: expected SECONDS:TEXT")
    if not asks:
        asks = [(None, "What happened?")]
    try:
        events = mic_events(args.seconds) if args.mic else file_events(args.file, args.fps)
        asyncio.run(run(args.url, events, asks, 1.0 if args.mic else args.speed, args.api_key, args.max_tokens))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
