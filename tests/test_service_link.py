"""Encoders and decoder as two services over the embedding link (`python -m app encoder` in its
own process): the same answer token for token as in one process, and an encoder killed
mid-stream: its sessions get an error, the decoder keeps serving, the restarted encoder's
sessions resume."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from app.realtime import Limits
from app.server import ServerConfig, create_app
from service_fixtures import RunningServer, events_until, pcm16

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    from omni_builders import build_omni_checkpoint
    path = tmp_path_factory.mktemp("omni")
    build_omni_checkpoint(path)
    return path


def _jpeg(color) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def start_encoder(link_port: int, model: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app", "encoder", "--connect", f"ws://127.0.0.1:{link_port}",
                             "--model", str(model), "--name", name, "--threads", "1"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_encoders(srv: RunningServer, want: list[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health").read())
        if health["encoders"] == want:
            return
        time.sleep(0.2)
    raise TimeoutError(f"encoders {want} did not connect (health: {health})")


async def stream_and_ask(url: str, seconds: float = 1.0, frames=((200, 30, 30), (20, 30, 200))) -> tuple[str, dict]:
    async with websockets.connect(url, max_size=None) as ws:
        await events_until(ws, "session.created")
        await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
        await events_until(ws, "session.updated")
        audio = pcm16(seconds)
        for k in range(0, len(audio), 9600):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(audio[k:k + 9600]).decode()}))
        for t, color in enumerate(frames):
            await ws.send(json.dumps({"type": "input_image_buffer.append", "image": _jpeg(color),
                                      "timestamp_ms": 500 * t}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 8}}))
        seen: list[dict] = []
        done = await events_until(ws, "response.done", sink=seen)
        errors = [e for e in seen if e["type"] == "error"]
        assert not errors, errors
        return "".join(e["delta"] for e in seen if e["type"] == "response.output_text.delta"), done["response"]


def test_same_answer_in_one_process_and_over_the_link(omni_dir):
    one = RunningServer(create_app(ServerConfig(model_dir=omni_dir, vad="energy")))
    try:
        text_one, resp_one = asyncio.run(stream_and_ask(one.url))
    finally:
        one.stop()
    two = RunningServer(create_app(ServerConfig(model_dir=omni_dir, vad="energy", in_process_encoder=False,
                                                link_port=0)))
    enc = start_encoder(two.state.link_port, omni_dir, "enc-a")
    try:
        wait_encoders(two, ["enc-a"])
        text_two, resp_two = asyncio.run(stream_and_ask(two.url))
        assert two.state.pool.chunks_received >= 2
    finally:
        enc.kill()
        enc.wait()
        two.stop()
    assert resp_one["usage"]["input_tokens"] == resp_two["usage"]["input_tokens"] > 40
    assert resp_one["usage"]["output_tokens"] == resp_two["usage"]["output_tokens"] == 8
    assert text_one == text_two


def test_killed_encoder_errors_its_sessions_decoder_serves_others_restart_resumes(omni_dir):
    srv = RunningServer(create_app(ServerConfig(model_dir=omni_dir, vad="energy", in_process_encoder=False,
                                                link_port=0, limits=Limits(resume_grace_s=5))))
    enc = start_encoder(srv.state.link_port, omni_dir, "enc-b")
    try:
        wait_encoders(srv, ["enc-b"])

        async def main():
            nonlocal enc
            async with websockets.connect(srv.url, max_size=None) as a, websockets.connect(srv.url) as b:
                await events_until(a, "session.created")
                await events_until(b, "session.created")
                await a.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}))
                audio = pcm16(0.4)
                await a.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}))
                await events_until(a, "session.updated")
                enc.send_signal(signal.SIGKILL)                 # mid-stream
                enc.wait()
                err = await events_until(a, "error", timeout=30)
                assert err["error"]["code"] == "encoder_unavailable"
                # the decoder keeps serving a text-only session
                await b.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
                await b.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 4}}))
                done_b = await events_until(b, "response.done")
                assert done_b["response"]["status"] == "incomplete"
                # media while no encoder is connected: a clear error
                await a.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()}))
                assert (await events_until(a, "error"))["error"]["code"] == "encoder_unavailable"
                enc = start_encoder(srv.state.link_port, omni_dir, "enc-b")
                await asyncio.to_thread(wait_encoders, srv, ["enc-b"])
                before = srv.state.pool.chunks_received
                for _ in range(3):
                    await a.send(json.dumps({"type": "input_audio_buffer.append",
                                             "audio": base64.b64encode(audio).decode()}))
                await a.send(json.dumps({"type": "input_audio_buffer.commit"}))
                await a.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 4}}))
                seen: list[dict] = []
                done_a = await events_until(a, "response.done", sink=seen)
                assert not [e for e in seen if e["type"] == "error"], seen
                return done_a, srv.state.pool.chunks_received - before
        done_a, new_chunks = asyncio.run(main())
        assert done_a["response"]["status"] == "incomplete" and new_chunks >= 1
    finally:
        enc.kill()
        enc.wait()
        srv.stop()
