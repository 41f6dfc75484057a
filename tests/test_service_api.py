"""The public API on a real server (uvicorn on a free 127.0.0.1 port): the realtime envelope, time
annotations, bad input and fuzzing, auth, limits, resume, a vanishing client, chat completions,
and the official openai SDK as a realtime client."""

from __future__ import annotations

import asyncio
import io
import base64
import json
import struct
import time

import pytest
import websockets
from hypothesis import HealthCheck, given, settings, strategies as st

from app.realtime import Limits
from app.server import ServerConfig, create_app
from fusion.omni import OmniModel
from service_fixtures import RunningServer, build_scripted_checkpoint, events_until, pcm16

ENVELOPE = ["response.created", "response.output_item.added", "conversation.item.added",
            "response.content_part.added", "response.output_text.delta", "response.output_text.done",
            "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done"]


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    from omni_builders import build_omni_checkpoint
    path = tmp_path_factory.mktemp("omni")
    build_omni_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    path = tmp_path_factory.mktemp("scripted")
    build_scripted_checkpoint(path, "[3 s]")
    srv = RunningServer(create_app(ServerConfig(model_dir=path, model_name="scripted",
                                                limits=Limits(resume_grace_s=0.3, rate_per_s=1e6, rate_burst=10 ** 6))))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def media_server(omni_dir):
    srv = RunningServer(create_app(ServerConfig(model_dir=omni_dir, model_name="tiny-omni", vad="energy",
                                                limits=Limits(resume_grace_s=0.3, max_file_bytes=1 << 20,
                                                              max_message_bytes=2 << 20))))
    yield srv
    srv.stop()


def run(coro):
    return asyncio.run(coro)


async def ask(ws, text: str | None = None, **response) -> list[dict]:
    if text is not None:
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create", "response": response}))
    seen: list[dict] = []
    await events_until(ws, "response.done", sink=seen)
    return seen[seen.index(next(e for e in seen if e["type"] == "response.created")):]


# ---- the envelope and annotations ------------------------------------------------------------------

def test_answer_envelope_order_text_and_time_annotation(scripted):
    async def main():
        async with websockets.connect(scripted.url) as ws:
            created = json.loads(await ws.recv())
            assert created["type"] == "session.created" and created["session"]["id"].startswith("sess_")
            return await ask(ws, "When?")
    events = run(main())
    kinds = [e["type"] for e in events if e["type"] != "response.output_text.annotation.added"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    # the envelope, with the deltas in the middle
    assert kinds == ENVELOPE[:4] + ["response.output_text.delta"] * len(deltas) + ENVELOPE[5:]
    text = "".join(d["delta"] for d in deltas)
    assert text == "[3 s]"
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == text
    assert done["usage"]["output_tokens"] == 5 and done["usage"]["time_to_first_token_ms"] > 0
    (ann,) = [e for e in events if e["type"] == "response.output_text.annotation.added"]
    assert ann["annotation"] == {"type": "media_timestamp", "start_ms": 3000, "end_ms": 3000, "source": "stream",
                                 "start_index": 0, "end_index": 5}
    ids = {e["response_id"] for e in events if "response_id" in e}
    assert ids == {events[0]["response"]["id"]}


# ---- bad input: an error with the right code, and the session lives on -------------------------------

BAD = [
    ("{not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    (json.dumps({"type": "no.such.event"}), "unknown_event"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64%%%"}), "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"RIFF....WAVEfmt ").decode()}),
     "invalid_audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}),
     "invalid_audio"),
    (json.dumps({"type": "input_image_buffer.append", "image": base64.b64encode(b"GIF89a not a frame").decode()}),
     "invalid_image"),
    (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
    (json.dumps({"type": "response.cancel"}), "response_not_found"),
    (json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 8000}}}}}),
     "invalid_value"),
    (json.dumps({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_video", "video_url": "data:video/mp4;base64," + base64.b64encode(b"not a video").decode()}]}}),
     "invalid_video"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (3 << 20)}), "payload_too_large"),
    (json.dumps({"type": "response.create", "response": {"omni": {"temperature": 9}}}), "invalid_value"),
    (json.dumps({"type": "response.create", "response": {"omni": {"choices": ["only one"]}}}), "invalid_value"),
    (json.dumps({"type": "response.create", "response": {"omni": {"choices": ["same", "same"]}}}), "invalid_value"),
]


def test_bad_input_gets_the_right_error_code_and_the_session_lives_on(media_server):
    async def main():
        codes = []
        async with websockets.connect(media_server.url, max_size=None) as ws:
            await events_until(ws, "session.created")
            for i, (raw, _) in enumerate(BAD):
                if raw.startswith("{") and not raw.startswith("{not"):
                    raw = json.dumps({**json.loads(raw), "event_id": f"evt_{i}"})
                await ws.send(raw)
                e = await events_until(ws, "error", timeout=30)
                codes.append((e["error"]["code"], e["error"]["event_id"]))
                if e["error"]["code"] == "invalid_video":     # decoding errors come from the encoder
                    assert "upload:" in e["error"]["message"] or "upload" in e["error"]["message"]
            await ws.send(b"\x01\x00")                        # binary media is off by default
            codes.append(((await events_until(ws, "error"))["error"]["code"], None))
            seen = await ask(ws, "still there?", max_output_tokens=3)
            chosen = await ask(ws, "yes or no?", max_output_tokens=40, omni={"choices": ["yes", "no"], "reasoning": False})
            return codes, seen, chosen
    codes, seen, chosen = run(main())
    assert [c for c, _ in codes] == [code for _, code in BAD] + ["binary_media_disabled"]
    assert codes[2][1] == "evt_2"                              # the client's event id comes back
    assert seen[-1]["response"]["status"] == "incomplete"
    done = chosen[-1]["response"]                              # guided choice: the answer is one of them
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"].strip() in ("yes", "no")


def test_binary_frames_and_a_frame_that_is_not_an_image(media_server):
    async def main():
        async with websockets.connect(media_server.url) as ws:
            await events_until(ws, "session.created")
            await ws.send(json.dumps({"type": "session.update", "session": {"omni": {"binary_media": True},
                                                                           "audio": {"input": {"turn_detection": None}}}}))
            await events_until(ws, "session.updated")
            await ws.send(struct.pack("<BQ", 0x02, 0) + b"not an image")
            bad_frame = (await events_until(ws, "error"))["error"]["code"]
            await ws.send(struct.pack("<BQ", 0x07, 0) + b"x")
            bad_kind = (await events_until(ws, "error"))["error"]["code"]
            await ws.send(struct.pack("<BQ", 0x01, 0) + pcm16(0.5))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            committed = await events_until(ws, "input_audio_buffer.committed")
            return bad_frame, bad_kind, committed
    bad_frame, bad_kind, committed = run(main())
    assert bad_frame == "invalid_image" and bad_kind == "invalid_binary_frame"
    assert committed["item_id"].startswith("item_")


_TYPES = st.sampled_from(["session.update", "input_audio_buffer.append", "input_image_buffer.append",
                          "conversation.item.create", "response.cancel", "input_audio_buffer.commit", "x.y", "", "🙂"])
_JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                     max_leaves=8)


@st.composite
def hostile_event(draw):
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.text(max_size=40).filter(lambda s: not _is_json_object(s)))          # not a JSON object
    if kind == 1:
        return json.dumps({"type": draw(st.text(max_size=20).filter(lambda t: t not in _KNOWN))})
    if kind == 2:   # known event, wrong shape
        t = draw(st.sampled_from(["session.update", "conversation.item.create"]))
        return json.dumps({"type": t, "session" if t == "session.update" else "item": draw(_JUNK.filter(
            lambda v: not isinstance(v, dict)))})
    if kind == 3:   # audio that is not base64 PCM16
        return json.dumps({"type": "input_audio_buffer.append", "audio": draw(
            st.text(alphabet="!@#$%^&*()", min_size=1, max_size=30) | st.integers())})
    if kind == 4:   # a frame that is not an image
        raw = draw(st.binary(min_size=1, max_size=60).filter(lambda b: not b.startswith((b"\xff\xd8\xff", b"\x89PNG"))))
        return json.dumps({"type": "input_image_buffer.append", "image": base64.b64encode(raw).decode()})
    return draw(st.binary(min_size=0, max_size=40))          # a binary frame (binary media is off)


_KNOWN = {"session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
          "input_image_buffer.append", "conversation.item.create", "response.create", "response.cancel"}


def _is_json_object(s: str) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except (ValueError, RecursionError):
        return False


def test_fuzz_a_thousand_hostile_events_each_get_an_error_then_a_normal_session(scripted):
    from websockets.sync.client import connect
    count = {"n": 0}

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(hostile_event())
    def one(event):
        ws.send(event)
        e = json.loads(ws.recv(timeout=20))
        assert e["type"] == "error", e
        assert e["error"]["code"] in {"invalid_json", "unknown_event", "invalid_value", "invalid_audio",
                                      "invalid_image", "binary_media_disabled"}, e
        count["n"] += 1
    with connect(scripted.url) as ws:
        json.loads(ws.recv())
        one()
    assert count["n"] >= 1000

    async def normal():
        async with websockets.connect(scripted.url) as ws2:
            await events_until(ws2, "session.created")
            return await ask(ws2, "ok?")
    events = run(normal())
    assert events[-1]["response"]["status"] == "completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "[3 s]"


# ---- auth, limits, resume, vanishing clients ------------------------------------------------------------

def test_api_key_bearer_and_browser_subprotocol(tmp_path):
    path = tmp_path / "m"
    build_scripted_checkpoint(path, "[3 s]")
    srv = RunningServer(create_app(ServerConfig(model_dir=path, api_key="sekrit")))
    try:
        async def main():
            async with websockets.connect(srv.url) as ws:              # no key
                e = json.loads(await ws.recv())
                assert e["type"] == "error" and e["error"]["code"] == "unauthorized"
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 1008
            async with websockets.connect(srv.url, additional_headers={"Authorization": "Bearer sekrit"}) as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
            async with websockets.connect(srv.url, subprotocols=["realtime", "openai-insecure-api-key.sekrit"]) as ws:
                assert ws.subprotocol == "realtime"                      # echoed, as Chromium requires
                assert json.loads(await ws.recv())["type"] == "session.created"
        run(main())
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/models")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 401
        req.add_header("Authorization", "Bearer sekrit")
        assert json.loads(urllib.request.urlopen(req).read())["data"][0]["object"] == "model"
        assert json.loads(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/health").read())["status"] == "ok"
    finally:
        srv.stop()


def test_session_count_rate_and_idle_limits(tmp_path):
    path = tmp_path / "m"
    build_scripted_checkpoint(path, "[3 s]")
    srv = RunningServer(create_app(ServerConfig(model_dir=path, limits=Limits(
        max_sessions=1, rate_per_s=5, rate_burst=5, idle_timeout_s=1.5, going_away_notice_s=1.0, resume_grace_s=0))))
    try:
        async def main():
            async with websockets.connect(srv.url) as ws:
                await events_until(ws, "session.created")
                async with websockets.connect(srv.url) as ws2:
                    e = json.loads(await ws2.recv())
                    assert e["error"]["code"] == "session_limit"
                for _ in range(12):
                    await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                seen = []
                await events_until(ws, "session.going_away", timeout=10, sink=seen)
                codes = [e["error"]["code"] for e in seen if e["type"] == "error"]
                assert "rate_limited" in codes and sum(e["type"] == "input_audio_buffer.cleared" for e in seen) >= 5
                with pytest.raises(websockets.ConnectionClosed):
                    await events_until(ws, "never", timeout=10)
        run(main())
    finally:
        srv.stop()


def test_resume_by_id_and_token_and_a_vanished_client_frees_its_session(scripted):
    async def main():
        base = scripted.call(scripted.state.engine.stats())
        ws = await websockets.connect(scripted.url)
        s = (await events_until(ws, "session.created"))["session"]
        await ask(ws, "first")
        await ws.close()
        ws = await websockets.connect(f"{scripted.url}?session_id={s['id']}&resume_token=wrong")
        assert json.loads(await ws.recv())["error"]["code"] == "session_not_found"
        ws = await websockets.connect(f"{scripted.url}?session_id={s['id']}&resume_token={s['omni']['resume_token']}")
        again = (await events_until(ws, "session.created"))["session"]
        assert again["id"] == s["id"] and again["resumed"]
        held = scripted.call(scripted.state.engine.stats())
        assert s["id"] in held["session_tokens"]
        # the client vanishes without a close handshake
        ws.transport.abort()
        deadline = time.time() + 10
        while time.time() < deadline:
            now = scripted.call(scripted.state.engine.stats())
            if s["id"] not in now["session_tokens"]:
                break
            await asyncio.sleep(0.1)
        return base, held, now
    base, held, now = run(main())
    assert held["state_bytes"] > base["state_bytes"]
    assert now["state_bytes"] == base["state_bytes"] and now["sessions"] == base["sessions"]
    assert now["answers"] == 0


# ---- media through the realtime API -----------------------------------------------------------------

def test_streamed_audio_and_frames_reach_the_decoder_and_an_answer_follows(media_server):
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG")
    jpeg = base64.b64encode(buf.getvalue()).decode()

    async def main():
        before = media_server.call(media_server.state.engine.stats())
        async with websockets.connect(media_server.url, max_size=None) as ws:
            sid = (await events_until(ws, "session.created"))["session"]["id"]
            await ws.send(json.dumps({"type": "session.update", "session": {
                "audio": {"input": {"turn_detection": None}}}}))
            audio = pcm16(1.0)
            for k in range(0, len(audio), 9600):
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(audio[k:k + 9600]).decode()}))
            for t in (0, 500):
                await ws.send(json.dumps({"type": "input_image_buffer.append", "image": jpeg, "timestamp_ms": t}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events = await ask(ws, "what did you hear and see?", max_output_tokens=4)
            tokens = media_server.call(media_server.state.engine.stats())["session_tokens"][sid]
        return before, events, tokens
    before, events, tokens = run(main())
    assert events[-1]["response"]["status"] in ("completed", "incomplete")
    # header + 1 s of audio (one flushed clip) + one video tubelet: more than the text alone
    assert tokens > 30
    assert media_server.state.pool.chunks_received >= 2


def test_a_narrating_model_reports_its_caption_of_each_chunk(omni_dir, tmp_path):
    """With config.json's stream_narration, every chunk read is followed by the model's caption of
    it, sent as `media.narration` with the chunk's time span, as the engine prefilled it."""
    import shutil
    narrating = tmp_path / "narrating"
    shutil.copytree(omni_dir, narrating)
    cfg = json.loads((narrating / "config.json").read_text())
    cfg["stream_narration"] = {"prefix": {"audio": "(heard: ", "video": "(seen: "}, "close": ")", "max_new_tokens": 4}
    (narrating / "config.json").write_text(json.dumps(cfg))
    srv = RunningServer(create_app(ServerConfig(model_dir=narrating, model_name="narrating", vad="energy")))
    try:
        async def main():
            async with websockets.connect(srv.url, max_size=None) as ws:
                sid = (await events_until(ws, "session.created"))["session"]["id"]
                await ws.send(json.dumps({"type": "session.update", "session": {
                    "audio": {"input": {"turn_detection": None}}}}))
                await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": base64.b64encode(pcm16(1.0)).decode()}))
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                await ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 2}}))
                seen: list[dict] = []
                await events_until(ws, "response.done", sink=seen)
                narration = [e for e in seen if e["type"] == "media.narration"]
                stats = srv.call(srv.state.engine.stats())
            return narration, stats["captions"][sid]
        narration, captions = run(main())
    finally:
        srv.stop()
    first = narration[0]
    assert first["modality"] == "audio" and first["start_ms"] == 0 and first["end_ms"] > 0
    assert first["text"].startswith("(heard:") and first["text"].endswith(")")
    assert first["text"] == captions[0][3].strip()


# ---- chat completions ----------------------------------------------------------------------------------

def test_chat_completions_plain_and_streaming(scripted):
    import urllib.request
    body = {"model": "scripted", "messages": [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": [{"type": "text", "text": "When?"}]}],
            "max_tokens": 16}

    def post(payload):
        req = urllib.request.Request(f"http://127.0.0.1:{scripted.port}/v1/chat/completions",
                                     data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(req).read().decode()
    out = json.loads(post(body))
    assert out["choices"][0]["message"]["content"] == "[3 s]" and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 5
    lines = [ln for ln in post({**body, "stream": True}).split("\n\n") if ln]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "[3 s]"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    with pytest.raises(urllib.error.HTTPError) as e:
        post({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "invalid_image"
    picked = json.loads(post({**body, "guided_choice": ["[9 s]", "[3 s]"]}))    # vLLM's guided choice
    assert picked["choices"][0]["message"]["content"].rpartition("</think>")[2].strip() in ("[9 s]", "[3 s]")
    with pytest.raises(urllib.error.HTTPError) as e:
        post({**body, "guided_choice": "[3 s]"})
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == "guided_choice"


# ---- conformance: the official openai SDK -----------------------------------------------------------

def test_openai_sdk_realtime_client_streams_audio_and_reads_the_answer(media_server):
    from openai import AsyncOpenAI
    from openai.types.realtime import ResponseDoneEvent, ResponseTextDeltaEvent, SessionCreatedEvent

    async def main():
        client = AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{media_server.port}/v1",
                             websocket_base_url=f"ws://127.0.0.1:{media_server.port}/v1")
        got = []
        async with client.realtime.connect(model="tiny-omni") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                               "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                                   "turn_detection": None}}})
            audio = pcm16(0.6)
            for k in range(0, len(audio), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(audio[k:k + 4800]).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create(response={"max_output_tokens": 6})
            async for event in conn:
                got.append(event)
                if event.type == "response.done":
                    break
        return got
    got = run(main())
    assert isinstance(got[0], SessionCreatedEvent)
    types = [e.type for e in got]
    assert "session.updated" in types and "input_audio_buffer.committed" in types
    deltas = [e for e in got if isinstance(e, ResponseTextDeltaEvent)]
    done = got[-1]
    assert isinstance(done, ResponseDoneEvent) and done.response.status == "incomplete"
    assert done.response.usage.output_tokens == 6 and deltas
    assert done.response.output[0].content[0].text == "".join(d.delta for d in deltas)


# ---- the Python client ------------------------------------------------------------------------------

def test_client_streams_a_file_as_if_live_and_collects_the_answers(media_server, tmp_path):
    import wave

    from app.client import Printer, file_events, run as client_run
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(pcm16(0.8))
    events = list(file_events(str(path), fps=1.0))
    assert len(events) == 8 and all(e["type"] == "input_audio_buffer.append" for _, e in events)
    out = io.StringIO()
    answers = run(client_run(media_server.url, iter(events), [(0.35, "early?"), (None, "late?")], speed=0,
                             max_tokens=3, printer=Printer(out)))
    assert len(answers) == 2 and out.getvalue().count("<<< incomplete, 3 tokens") == 2


def _node_with_websocket():
    import shutil
    import subprocess
    node = shutil.which("node")
    if node is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        r = subprocess.run([node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
                           capture_output=True)
        if r.returncode == 0:
            return [node, *flags]
    return None


def test_browser_client_omnistream_js_asks_and_reads_the_answer(scripted, tmp_path):
    import subprocess
    from pathlib import Path
    node = _node_with_websocket()
    if node is None:
        pytest.skip("node with a WebSocket global is not installed")
    js = Path(__file__).resolve().parent.parent / "app" / "static" / "omnistream.js"
    script = tmp_path / "ask.cjs"
    script.write_text(f"""
const OmniStream = require({json.dumps(str(js))});
const os = new OmniStream(process.argv[2]);
let text = "", spans = [];
os.on("delta", (d) => {{ text += d; }});
os.on("annotation", (a) => spans.push(a));
os.on("done", (r) => {{ console.log(JSON.stringify({{status: r.status, text, spans, protocol: os.ws.protocol}})); os.close(); }});
os.connect().then(() => os.ask("when?"));
""")
    r = subprocess.run([*node, str(script), scripted.url], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"status": "completed", "text": "[3 s]", "protocol": "realtime",
                   "spans": [{"type": "media_timestamp", "start_ms": 3000, "end_ms": 3000, "source": "stream",
                              "start_index": 0, "end_index": 5}]}
