"""WS /v1/realtime: the public streaming API, one connection at a time (spec realtime-protocol.md).

A `RealtimeSession` outlives its connections: it owns the stream (the engine session, its
encoder feed), the session clock, the VAD, the conversation items and the running answer. A
`RealtimeConnection` reads client events, checks them (size, rate, shape) and turns each into
work: audio and frames go to the encoder pool, questions to the engine loop; it writes server
events through a bounded queue. Every bad event gets an `error` event in the OpenAI shape with a
code, and the session lives on. When the connection drops, the session waits `resume_grace_s`
for the client to come back with `?session_id=...&resume_token=...`, then is freed.

An answer is the GA envelope: response.created, response.output_item.added,
conversation.item.added, response.content_part.added, response.output_text.delta...,
response.output_text.annotation.added (a time span in the text, see app/timestamps.py),
response.output_text.done, response.content_part.done, response.output_item.done,
conversation.item.done, response.done.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import secrets
import struct
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.generate import SamplingParams
from engine.tokenizer import StreamDecoder
from fusion.prompt import question_tail, stream_header

from .engine_loop import ResponseRequest
from .link import Control, Media, PoolError
from .timestamps import SpanStream
from .vad import TurnDetector, make_scorer

BINARY_AUDIO, BINARY_FRAME = 0x01, 0x02
_BINARY_HEAD = struct.Struct("<BQ")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
CONTAINER_MAGIC = {b"RIFF": "WAV", b"ID3": "MP3", b"OggS": "Ogg", b"fLaC": "FLAC", b"\x1aE\xdf\xa3": "WebM/Matroska"}


@dataclass
class Limits:
    """Every limit of the public API (all configurable; each breach is a clear error)."""
    max_message_bytes: int = 16 << 20       # one client event
    max_file_bytes: int = 12 << 20          # one decoded image / audio / video upload
    max_session_s: float = 4 * 3600.0       # a session's lifetime
    max_sessions: int = 32
    rate_per_s: float = 200.0               # client events per second, per session
    rate_burst: int = 400
    idle_timeout_s: float = 600.0           # no client event for this long closes the connection
    going_away_notice_s: float = 10.0       # session.going_away comes this long before a limit closes
    resume_grace_s: float = 60.0            # a dropped session waits this long for its client
    max_audio_backlog_s: float = 10.0       # audio the encoder may be behind before appends fail
    max_pending_frames: int = 8             # live frames waiting for the encoder (oldest dropped)
    max_output_tokens: int = 4096
    max_text_chars: int = 64 << 10          # instructions, one text part


class ProtocolError(ValueError):
    """A client event the server refuses; becomes an `error` event."""

    def __init__(self, code: str, message: str, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.param, self.type = code, param, type_


def number_field(body: dict, name: str, lo, hi, default, integer: bool = False, where: str = ""):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not lo <= v <= hi:
        raise ProtocolError("invalid_value", f"{where}{name} must be a number in [{lo}, {hi}]", where + name)
    return v


def sampling_params(body: dict, max_tokens: int, where: str = "") -> SamplingParams:
    """SamplingParams from an object's temperature (default 0: greedy), top_p, top_k and seed;
    `where` prefixes the field names in errors (e.g. "response.omni.")."""
    return SamplingParams(max_new_tokens=max_tokens, temperature=number_field(body, "temperature", 0, 2, 0.0, where=where),
                          top_p=number_field(body, "top_p", 1e-6, 1, 1.0, where=where),
                          top_k=number_field(body, "top_k", 0, 1 << 20, 0, True, where),
                          seed=number_field(body, "seed", 0, 2 ** 63 - 1, None, True, where))


MAX_CHOICES, MAX_CHOICE_CHARS = 26, 1000


def choices_field(value, where: str) -> tuple[str, ...] | None:
    """A guided-choice list (None: free answer): 2 to MAX_CHOICES distinct non-empty strings of at
    most MAX_CHOICE_CHARS characters each."""
    if value is None:
        return None
    if (not isinstance(value, list) or not 2 <= len(value) <= MAX_CHOICES
            or not all(isinstance(v, str) and 0 < len(v) <= MAX_CHOICE_CHARS for v in value)
            or len(set(value)) != len(value)):
        raise ProtocolError("invalid_value", f"{where} must be a list of 2 to {MAX_CHOICES} distinct non-empty strings "
                                             f"of at most {MAX_CHOICE_CHARS} characters (the answers to choose from)",
                            where)
    return tuple(value)


def error_event(code: str, message: str, param=None, event_id=None, type_="invalid_request_error") -> dict:
    return {"type": "error", "error": {"type": type_, "code": code, "message": message, "param": param,
                                       "event_id": event_id}}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


# ---- decoding client payloads ------------------------------------------------------------------------

def decode_base64(value, what: str, code: str, limit: int, param: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(code, f"{what} must be a base64 string", param)
    if value.startswith("data:"):
        head, _, value = value.partition(",")
        if ";base64" not in head:
            raise ProtocolError(code, f"{what}: only base64 data URLs are accepted", param)
    if len(value) * 3 // 4 > limit:
        raise ProtocolError("payload_too_large", f"{what} is about {len(value) * 3 // 4} bytes, over the limit of "
                                                 f"{limit} bytes", param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(code, f"{what} is not valid base64", param) from None


def pcm16_samples(data: bytes, param: str) -> np.ndarray:
    if not data:
        raise ProtocolError("invalid_audio", "audio is empty", param)
    for magic, name in CONTAINER_MAGIC.items():
        if data.startswith(magic):
            raise ProtocolError("invalid_audio", f"audio is a {name} file; input_audio_buffer.append takes raw "
                                                 "PCM16 mono samples (send files as conversation items)", param)
    if len(data) % 2:
        raise ProtocolError("invalid_audio", f"audio has {len(data)} bytes; PCM16 needs an even number", param)
    return np.frombuffer(data, dtype="<i2")


def check_image(data: bytes, param: str) -> None:
    if not data.startswith(IMAGE_MAGIC):
        raise ProtocolError("invalid_image", "the frame is not a JPEG or PNG image", param)


class Resampler:
    """PCM16 mono at the session rate -> float32 16 kHz, streaming (PyAV's libswresample)."""

    def __init__(self, rate: int):
        self.rate = rate
        self._r = None
        if rate != 16000:
            import av
            self._r = av.AudioResampler(format="flt", layout="mono", rate=16000)

    def __call__(self, pcm: np.ndarray) -> np.ndarray:
        x = pcm.astype(np.float32) / 32768.0
        if self._r is None:
            return x
        import av
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        out = [f.to_ndarray().reshape(-1) for f in self._r.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class RateLimiter:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# ---- the session ---------------------------------------------------------------------------------------

@dataclass
class Omni:
    """The `session.omni` extension."""
    video_fps: float = 1.0
    reasoning: bool = True
    reasoning_budget: int | None = None
    binary_media: bool = False
    evs_rate: float | None = None
    clip_s: float = 2.0


@dataclass
class _Response:
    id: str
    item_id: str
    question: str
    max_tokens: int
    reasoning: bool
    budget: int | None
    sampling: SamplingParams
    choices: tuple[str, ...] | None = None
    created: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    handle: object = None
    task: asyncio.Task | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    encode_ms: float = 0.0


class RealtimeSession:
    def __init__(self, hub: "RealtimeHub"):
        self.hub = hub
        self.id, self.token = _id("sess"), secrets.token_urlsafe(24)
        self.created = time.time()
        self.started = time.monotonic()
        self.instructions = ""
        self.extra_instructions = ""       # instructions set after the stream began
        self.rate = 24000
        self.turn_detection: dict | None = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                            "silence_duration_ms": 500, "create_response": True,
                                            "interrupt_response": False}
        self.max_output_tokens = hub.limits.max_output_tokens
        self.omni = Omni()
        self.resampler = Resampler(self.rate)
        self.vad: TurnDetector | None = None
        self.audio_samples = 0             # 16 kHz samples received: the session clock when audio flows
        self.uncommitted_samples = 0
        self.engine_open = False
        self.feed_open = False
        self.pending_text: list[str] = []
        self.last_item: str | None = None
        self.response: _Response | None = None
        self.waiting: dict[str, _Response] = {}       # responses waiting for their flush
        self.frames_dropped = 0
        self.conn: RealtimeConnection | None = None
        self.detached_at: float | None = time.monotonic()
        self.limiter = RateLimiter(hub.limits.rate_per_s, hub.limits.rate_burst)
        self.closed = False

    # -- what clients see --
    def describe(self) -> dict:
        return {"type": "realtime", "object": "realtime.session", "id": self.id, "model": self.hub.model_name,
                "output_modalities": ["text"], "instructions": self.instructions,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.rate},
                                    "turn_detection": self.turn_detection}},
                "max_output_tokens": self.max_output_tokens,
                "expires_at": int(self.created + self.hub.limits.max_session_s),
                "omni": {**self.omni.__dict__, "vad": self.hub.vad_kind, "resume_token": self.token}}

    def clock_ms(self) -> int:
        if self.audio_samples:
            return self.audio_samples * 1000 // 16000
        return int((time.monotonic() - self.started) * 1000)

    async def emit(self, event: dict) -> None:
        if self.conn is not None:
            await self.conn.send(event)

    def emit_nowait(self, event: dict) -> None:
        """For reports from the encoder path, which must never wait on one slow client."""
        if self.conn is not None:
            self.conn.send_nowait(event)

    # -- the stream ---------------------------------------------------------------------------------
    async def ensure_engine(self) -> None:
        if not self.engine_open:
            self.engine_open = True
            await self.hub.engine.open_session(self.id, stream_header(self.instructions), self._engine_error,
                                               self._narration)

    def _engine_error(self, code: str, message: str) -> None:
        asyncio.get_running_loop().create_task(self.emit(error_event(code, message, type_="server_error")))

    def _narration(self, chunk, caption: str) -> None:
        """A narrating model's caption of a chunk it just read (what it perceives, as it streams)."""
        self.emit_nowait({"type": "media.narration", "modality": chunk.modality, "start_ms": round(chunk.t0 * 1000),
                          "end_ms": round(chunk.t1 * 1000), "text": caption.strip()})

    async def submit(self, msg) -> int:
        await self.ensure_engine()
        if not self.feed_open:
            self.feed_open = True
            self.hub.pool.open(self.id, {"clip_s": self.omni.clip_s, "evs_rate": self.omni.evs_rate
                                         if self.omni.evs_rate is not None else self.hub.evs_rate}, self)
        try:
            return self.hub.pool.submit(self.id, msg)
        except PoolError as e:
            raise ProtocolError(e.code, str(e), type_="server_error") from None

    async def encoder_event(self, msg: Control) -> None:
        """Reports from the encoder side (app/link.py EncoderPool)."""
        d = msg.data
        if msg.type == "flushed":
            resp = self.waiting.pop(d.get("token"), None)
            if resp is not None:
                resp.encode_ms = float(d.get("encode_ms", 0.0))
                resp.started.set()
        elif msg.type == "progress":
            self.emit_nowait({"type": "media.progress", "item_id": d.get("item_id"), "done_ms": d.get("done_ms"),
                             "total_ms": d.get("total_ms")})
        elif msg.type == "item_done":
            self.emit_nowait({"type": "conversation.item.done", "item": self._user_item(d.get("item_id"), [])})
        elif msg.type == "error":
            code = d.get("code", "encoder_error")
            self.emit_nowait(error_event(code, str(d.get("message", "")), param=d.get("item_id"),
                                        type_="server_error" if code == "encoder_unavailable" else "invalid_request_error"))
            if code == "encoder_unavailable":        # nothing will flush now: answer from what is there
                for resp in self.waiting.values():
                    resp.started.set()
                self.waiting.clear()

    def _user_item(self, item_id, content) -> dict:
        return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": content}

    # -- answers ------------------------------------------------------------------------------------
    async def start_response(self, params: dict, event_id=None) -> None:
        if self.response is not None:
            raise ProtocolError("conversation_already_has_active_response",
                                f"response {self.response.id} is still running; cancel it or wait for response.done")
        if not isinstance(params, dict):
            raise ProtocolError("invalid_value", "response must be an object", "response")
        omni = params.get("omni") or {}
        if not isinstance(omni, dict):
            raise ProtocolError("invalid_value", "response.omni must be an object", "response.omni")
        max_tokens = _max_tokens(params.get("max_output_tokens", self.max_output_tokens), self.hub.limits,
                                 "response.max_output_tokens")
        instructions = params.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolError("invalid_value", "response.instructions must be a string", "response.instructions")
        reasoning = omni.get("reasoning", self.omni.reasoning)
        budget = omni.get("reasoning_budget", self.omni.reasoning_budget)
        if not isinstance(reasoning, bool) or not (budget is None or _is_int(budget) and budget >= 1):
            raise ProtocolError("invalid_value", "response.omni: reasoning is a boolean, reasoning_budget a positive "
                                                 "integer or null", "response.omni")
        sampling = sampling_params(omni, max_tokens, "response.omni.")
        choices = choices_field(omni.get("choices"), "response.omni.choices")
        question = "\n".join(x for x in (self.extra_instructions, instructions or "", *self.pending_text) if x)
        self.pending_text = []
        resp = _Response(_id("resp"), _id("item"), question, max_tokens, reasoning, budget, sampling, choices)
        self.response = resp
        await self.ensure_engine()
        if self.feed_open:                       # media first: the encoder flushes, then we answer
            self.waiting[resp.id] = resp
            try:
                await self.submit(Control(self.id, "flush", {"token": resp.id}))
            except ProtocolError:
                self.waiting.pop(resp.id, None)
                resp.started.set()
        else:
            resp.started.set()
        resp.task = asyncio.get_running_loop().create_task(self._run_response(resp))

    async def cancel_response(self, response_id=None) -> None:
        resp = self.response
        if resp is None or (response_id is not None and response_id != resp.id):
            raise ProtocolError("response_not_found", "no response is running" if resp is None else
                                f"response {response_id!r} is not the running response", "response_id")
        resp.cancelled = True
        resp.started.set()
        await self.hub.engine.cancel(resp.id)

    async def _run_response(self, resp: _Response) -> None:
        tok = self.hub.tokenizer
        base = {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}
        item = {"id": resp.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        envelope = {"id": resp.id, "object": "realtime.response", "status": "in_progress", "status_details": None,
                    "output": [], "conversation_id": self.id, "output_modalities": ["text"],
                    "max_output_tokens": resp.max_tokens, "usage": None}
        await self.emit({"type": "response.created", "response": envelope})
        text, status, details, handle = "", "cancelled", {"type": "cancelled", "reason": "client_cancelled"}, None
        try:
            await resp.started.wait()
            await self.emit({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0, "item": item})
            await self.emit({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": item})
            self.last_item = resp.item_id
            await self.emit({"type": "response.content_part.added", **base, "part": {"type": "text", "text": ""}})
            if not resp.cancelled:
                handle = await self.hub.engine.respond(ResponseRequest(
                    resp.id, self.id, question_tail(resp.question, resp.reasoning),
                    resp.sampling, resp.budget if resp.reasoning else None, resp.choices))
                resp.handle = handle
                if resp.cancelled:
                    await self.hub.engine.cancel(resp.id)
                stream, spans = StreamDecoder(tok), SpanStream(media_duration=self.clock_ms() / 1000 or None)
                stops = set(self.hub.engine.stop_ids)
                async for t in handle:
                    if t in stops:
                        continue
                    piece = stream.feed(t)
                    if piece:
                        text += piece
                        await self.emit({"type": "response.output_text.delta", **base, "delta": piece})
                        await self._annotate(base, spans.feed(piece))
                piece = stream.flush()
                if piece:
                    text += piece
                    await self.emit({"type": "response.output_text.delta", **base, "delta": piece})
                    await self._annotate(base, spans.feed(piece))
                await self._annotate(base, spans.close())
                status = handle.status
                details = {"type": status, "reason": handle.reason} if status != "completed" else None
                if status == "failed":
                    details = {"type": "failed", "error": {"type": "server_error", "code": handle.reason,
                                                           "message": handle.error}}
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": "session_closed"}
            raise
        finally:
            self.response = None
            part = {"type": "text", "text": text}
            item = {**item, "status": "completed" if status == "completed" else "incomplete",
                    "content": [{"type": "output_text", "text": text}]}
            n_in = handle.input_tokens if handle else 0
            n_out = handle.output_tokens if handle else 0
            usage = {"total_tokens": n_in + n_out, "input_tokens": n_in, "output_tokens": n_out,
                     "time_to_first_token_ms": round(handle.ttft_s * 1000, 1) if handle and handle.ttft_s else None,
                     "encoder_ms": round(resp.encode_ms, 1), "frames_dropped": self.frames_dropped}
            if not self.closed:
                try:
                    await self.emit({"type": "response.output_text.done", **base, "text": text})
                    await self.emit({"type": "response.content_part.done", **base, "part": part})
                    await self.emit({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                                     "item": item})
                    await self.emit({"type": "conversation.item.done", "item": item})
                    await self.emit({"type": "response.done", "response": {**envelope, "status": status,
                                                                           "status_details": details, "output": [item],
                                                                           "usage": usage}})
                except Exception:
                    pass

    async def _annotate(self, base: dict, spans) -> None:
        source = "audio" if self.audio_samples else "stream"
        for s in spans:
            await self.emit({"type": "response.output_text.annotation.added", **base, "annotation_index": 0,
                             "annotation": {"type": "media_timestamp", "start_ms": round(s.start_s * 1000),
                                            "end_ms": round(s.end_s * 1000), "source": source,
                                            "start_index": s.start_index, "end_index": s.end_index}})

    # -- audio ------------------------------------------------------------------------------------------
    async def append_audio(self, pcm: np.ndarray) -> None:
        if self.hub.capabilities.get("audio") is False:
            raise ProtocolError("invalid_audio", "this model has no audio encoder: it takes no audio")
        samples = self.resampler(pcm)
        if not samples.size:
            return
        await self.submit(Media(self.id, "audio", samples.astype("<f4").tobytes()))
        self.audio_samples += samples.size
        self.uncommitted_samples += samples.size
        if self.turn_detection:
            if self.vad is None:
                td = self.turn_detection
                self.vad = TurnDetector(make_scorer(self.hub.vad_kind), td.get("threshold", 0.5),
                                        td.get("prefix_padding_ms", 300), td.get("silence_duration_ms", 500))
            for ev in self.vad.feed(torch.from_numpy(samples)):
                if ev.type == "speech_started":
                    self._speech_item = _id("item")
                    await self.emit({"type": "input_audio_buffer.speech_started", "audio_start_ms": ev.ms,
                                     "item_id": self._speech_item})
                else:
                    item_id = getattr(self, "_speech_item", None) or _id("item")
                    await self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ev.ms,
                                     "item_id": item_id})
                    await self.commit(item_id, auto=True)

    async def commit(self, item_id=None, auto=False) -> None:
        if self.uncommitted_samples < 1600:
            raise ProtocolError("input_audio_buffer_commit_empty",
                                f"the audio buffer holds {self.uncommitted_samples * 1000 // 16000} ms; a commit needs "
                                "at least 100 ms of audio")
        item_id = item_id or _id("item")
        self.uncommitted_samples = 0
        await self.emit({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item, "item_id": item_id})
        item = self._user_item(item_id, [{"type": "input_audio", "transcript": None}])
        await self.emit({"type": "conversation.item.added", "previous_item_id": self.last_item, "item": item})
        await self.emit({"type": "conversation.item.done", "item": item})
        self.last_item = item_id
        if auto and self.turn_detection and self.turn_detection.get("create_response", True) and self.response is None:
            await self.start_response({})

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def destroy(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hub.sessions.pop(self.id, None)
        if self.response is not None and self.response.task is not None:
            self.response.task.cancel()
        if self.feed_open:
            await self.hub.pool.close(self.id)
        if self.engine_open:
            await self.hub.engine.close_session(self.id)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _max_tokens(v, limits: Limits, param: str) -> int:
    if v == "inf":
        return limits.max_output_tokens
    if not _is_int(v) or v < 1:
        raise ProtocolError("invalid_value", f"{param} must be a positive integer or \"inf\"", param)
    return min(v, limits.max_output_tokens)


# ---- a connection --------------------------------------------------------------------------------------

class RealtimeConnection:
    def __init__(self, hub: "RealtimeHub", ws, session: RealtimeSession):
        self.hub, self.ws, self.session = hub, ws, session
        self.out: asyncio.Queue = asyncio.Queue(256)
        self.last_event = time.monotonic()
        self.closing = False
        self.dropped_events = 0

    async def send(self, event: dict) -> None:
        event.setdefault("event_id", _id("event"))
        await self.out.put(event)

    def send_nowait(self, event: dict) -> None:
        event.setdefault("event_id", _id("event"))
        try:
            self.out.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_events += 1

    async def _writer(self) -> None:
        while True:
            event = await self.out.get()
            if event is None:
                return
            await self.ws.send_text(json.dumps(event))

    async def run(self) -> None:
        writer = asyncio.get_running_loop().create_task(self._writer())
        watchdog = asyncio.get_running_loop().create_task(self._watchdog())
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                self.last_event = time.monotonic()
                await self._event(msg.get("text"), msg.get("bytes"))
        finally:
            watchdog.cancel()
            try:
                self.out.put_nowait(None)
                await asyncio.wait_for(writer, 2)
            except (asyncio.QueueFull, asyncio.TimeoutError, Exception):
                writer.cancel()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        try:
            await self.out.put(None)
            await asyncio.sleep(0.05)
            await self.ws.close(code, reason)
        except Exception:
            pass

    async def _watchdog(self) -> None:
        lim, s = self.hub.limits, self.session
        warned_idle = warned_life = False
        while True:
            await asyncio.sleep(min(1.0, lim.idle_timeout_s / 4, lim.max_session_s / 4))
            now = time.monotonic()
            life_left = lim.max_session_s - (now - s.started)
            idle_left = lim.idle_timeout_s - (now - self.last_event)
            if life_left <= lim.going_away_notice_s and not warned_life:
                warned_life = True
                await self.send({"type": "session.going_away", "reason": "max_session_length",
                                 "time_left_ms": max(0, int(life_left * 1000))})
            if life_left <= 0:
                await self.send(error_event("session_limit", f"the session reached its maximum length of "
                                                             f"{lim.max_session_s:g} s"))
                await s.destroy()
                await self.close(1000, "session length limit")
                return
            if idle_left <= lim.going_away_notice_s and not warned_idle:
                warned_idle = True
                await self.send({"type": "session.going_away", "reason": "idle_timeout",
                                 "time_left_ms": max(0, int(idle_left * 1000))})
            elif idle_left > lim.going_away_notice_s:
                warned_idle = False
            if idle_left <= 0:
                await self.close(1000, "idle timeout")
                return

    async def _event(self, text: str | None, data: bytes | None) -> None:
        event_id = None
        try:
            size = len(text.encode()) if text is not None else len(data or b"")
            if size > self.hub.limits.max_message_bytes:
                raise ProtocolError("payload_too_large", f"the message has {size} bytes, over the limit of "
                                                         f"{self.hub.limits.max_message_bytes} bytes")
            if not self.session.limiter.allow():
                raise ProtocolError("rate_limited", f"more than {self.hub.limits.rate_per_s:g} events a second "
                                                    "(burst {self.hub.limits.rate_burst}); this event was dropped",
                                    type_="rate_limit_error")
            if text is None:
                await self._binary(data or b"")
                return
            try:
                event = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                raise ProtocolError("invalid_json", "the message is not valid JSON") from None
            if not isinstance(event, dict):
                raise ProtocolError("invalid_json", "an event must be a JSON object")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            handler = HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ProtocolError("unknown_event", f"unknown event type {str(kind)[:64]!r}", "type")
            await handler(self, event)
        except ProtocolError as e:
            await self.send(error_event(e.code, str(e), e.param, event_id, e.type))

    async def _binary(self, data: bytes) -> None:
        s = self.session
        if not s.omni.binary_media:
            raise ProtocolError("binary_media_disabled", "binary frames are off; turn them on with "
                                                         "session.update {session:{omni:{binary_media:true}}}")
        if len(data) < _BINARY_HEAD.size:
            raise ProtocolError("invalid_binary_frame", f"a binary frame needs a {_BINARY_HEAD.size}-byte header "
                                                        "(u8 kind, u64 timestamp_ms)")
        kind, t_ms = _BINARY_HEAD.unpack_from(data)
        payload = data[_BINARY_HEAD.size:]
        if kind == BINARY_AUDIO:
            await s.append_audio(pcm16_samples(payload, "audio"))
        elif kind == BINARY_FRAME:
            await self._frame(payload, t_ms)
        else:
            raise ProtocolError("invalid_binary_frame", f"binary frame kind {kind:#04x} (0x01 PCM16 audio, "
                                                        "0x02 JPEG/PNG frame)")

    async def _frame(self, image: bytes, t_ms) -> None:
        s = self.session
        if self.hub.capabilities.get("vision") is False:
            raise ProtocolError("invalid_image", "this model has no vision encoder: it takes no images")
        if len(image) > self.hub.limits.max_file_bytes:
            raise ProtocolError("payload_too_large", f"the frame has {len(image)} bytes, over the limit of "
                                                     f"{self.hub.limits.max_file_bytes}", "image")
        check_image(image, "image")
        if t_ms is None:
            t_ms = s.clock_ms()
        if not (_is_int(t_ms) and 0 <= t_ms < 1 << 53):
            raise ProtocolError("invalid_value", "timestamp_ms must be a non-negative integer", "timestamp_ms")
        dropped = await s.submit(Media(s.id, "frame", image, {"t_ms": t_ms}))
        if dropped:
            s.frames_dropped += dropped
            await self.send({"type": "media.dropped", "modality": "video", "dropped": dropped,
                             "total_dropped": s.frames_dropped, "timestamp_ms": t_ms})


# ---- event handlers ------------------------------------------------------------------------------------

async def _session_update(conn: RealtimeConnection, event: dict) -> None:
    s, lim = conn.session, conn.hub.limits
    cfg = event.get("session")
    if not isinstance(cfg, dict):
        raise ProtocolError("invalid_value", "session.update needs a session object", "session")
    instructions = cfg.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str) or len(instructions) > lim.max_text_chars:
            raise ProtocolError("invalid_value", f"instructions must be a string of at most {lim.max_text_chars} "
                                                 "characters", "session.instructions")
    modalities = cfg.get("output_modalities", cfg.get("modalities"))
    if modalities is not None and (not isinstance(modalities, list) or "text" not in modalities):
        raise ProtocolError("invalid_value", "this server answers in text: output_modalities must include \"text\"",
                            "session.output_modalities")
    audio_in = ((cfg.get("audio") or {}).get("input") or {}) if isinstance(cfg.get("audio"), dict) else {}
    if not isinstance(audio_in, dict):
        raise ProtocolError("invalid_value", "session.audio.input must be an object", "session.audio.input")
    rate = None
    fmt = audio_in.get("format")
    if isinstance(fmt, dict):
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            raise ProtocolError("invalid_value", "audio format must be audio/pcm (PCM16 mono)", "session.audio.input.format")
        rate = fmt.get("rate", 24000)
    elif cfg.get("input_audio_format") is not None:            # beta shape
        if cfg["input_audio_format"] != "pcm16":
            raise ProtocolError("invalid_value", "input_audio_format must be pcm16", "session.input_audio_format")
        rate = 24000
    if rate is not None and rate not in (16000, 24000):
        raise ProtocolError("invalid_value", f"audio rate {rate!r}: 24000 or 16000", "session.audio.input.format.rate")
    td_given = "turn_detection" in audio_in or "turn_detection" in cfg
    td = audio_in.get("turn_detection", cfg.get("turn_detection"))
    if td_given and td is not None:
        if not isinstance(td, dict) or td.get("type", "server_vad") != "server_vad":
            raise ProtocolError("invalid_value", "turn_detection must be null or {type: \"server_vad\", ...}",
                                "session.audio.input.turn_detection")
        for key, lo, hi in (("threshold", 0.0, 1.0), ("prefix_padding_ms", 0, 10000), ("silence_duration_ms", 0, 10000)):
            v = td.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi):
                raise ProtocolError("invalid_value", f"turn_detection.{key} must be in [{lo}, {hi}]",
                                    f"session.audio.input.turn_detection.{key}")
    omni = cfg.get("omni")
    new_omni = None
    if omni is not None:
        if not isinstance(omni, dict):
            raise ProtocolError("invalid_value", "session.omni must be an object", "session.omni")
        new_omni = Omni(**s.omni.__dict__)
        checks = {"video_fps": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 30,
                  "reasoning": lambda v: isinstance(v, bool),
                  "reasoning_budget": lambda v: v is None or _is_int(v) and v >= 1,
                  "binary_media": lambda v: isinstance(v, bool),
                  "evs_rate": lambda v: v is None or isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                  "clip_s": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.5 <= v <= 30}
        for key, v in omni.items():
            if key not in checks:
                raise ProtocolError("invalid_value", f"unknown session.omni field {key!r} (known: {sorted(checks)})",
                                    f"session.omni.{key}")
            if not checks[key](v):
                raise ProtocolError("invalid_value", f"session.omni.{key} = {v!r:.40} is out of range", f"session.omni.{key}")
            setattr(new_omni, key, v)
    max_tokens = cfg.get("max_output_tokens", cfg.get("max_response_output_tokens"))
    max_tokens = _max_tokens(max_tokens, lim, "session.max_output_tokens") if max_tokens is not None else None
    # everything checked: apply
    if instructions is not None:
        if s.engine_open:
            s.extra_instructions = instructions      # the header is prefilled: later questions carry them
        else:
            s.instructions = instructions
    if rate is not None and rate != s.rate:
        s.rate, s.resampler = rate, Resampler(rate)
    if td_given:
        s.turn_detection = None if td is None else {**{"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                                        "silence_duration_ms": 500, "create_response": True,
                                                        "interrupt_response": False}, **td}
        s.vad = None
    if new_omni is not None:
        s.omni = new_omni
        if s.feed_open:
            conn.hub.pool.configure(s.id, {"clip_s": new_omni.clip_s, "evs_rate": new_omni.evs_rate
                                           if new_omni.evs_rate is not None else conn.hub.evs_rate})
    if max_tokens is not None:
        s.max_output_tokens = max_tokens
    await conn.send({"type": "session.updated", "session": s.describe()})


async def _audio_append(conn: RealtimeConnection, event: dict) -> None:
    data = decode_base64(event.get("audio"), "audio", "invalid_audio", conn.hub.limits.max_message_bytes, "audio")
    await conn.session.append_audio(pcm16_samples(data, "audio"))


async def _audio_commit(conn: RealtimeConnection, event: dict) -> None:
    await conn.session.commit()


async def _audio_clear(conn: RealtimeConnection, event: dict) -> None:
    conn.session.uncommitted_samples = 0
    await conn.send({"type": "input_audio_buffer.cleared"})


async def _image_append(conn: RealtimeConnection, event: dict) -> None:
    data = decode_base64(event.get("image"), "image", "invalid_image", conn.hub.limits.max_file_bytes, "image")
    await conn._frame(data, event.get("timestamp_ms"))


async def _item_create(conn: RealtimeConnection, event: dict) -> None:
    s, lim = conn.session, conn.hub.limits
    item = event.get("item")
    if not isinstance(item, dict) or item.get("type", "message") != "message":
        raise ProtocolError("invalid_value", "item must be a message object", "item")
    role = item.get("role")
    if role not in ("user", "system"):
        raise ProtocolError("invalid_value", "item.role must be user or system", "item.role")
    content = item.get("content")
    if not isinstance(content, list) or not content:
        raise ProtocolError("invalid_value", "item.content must be a non-empty list of parts", "item.content")
    # check every part before acting on any
    work = []
    for i, part in enumerate(content):
        p = f"item.content[{i}]"
        if not isinstance(part, dict):
            raise ProtocolError("invalid_value", f"{p} must be an object", p)
        kind = part.get("type")
        if kind in ("input_text", "text"):
            text = part.get("text")
            if not isinstance(text, str) or len(text) > lim.max_text_chars:
                raise ProtocolError("invalid_value", f"{p}.text must be a string of at most {lim.max_text_chars} "
                                                     "characters", f"{p}.text")
            work.append(("text", text, None))
        elif role == "system":
            raise ProtocolError("invalid_value", "a system item holds text only", p)
        elif kind == "input_image":
            data = decode_base64(part.get("image_url"), f"{p}.image_url", "invalid_image", lim.max_file_bytes,
                                 f"{p}.image_url")
            check_image(data, f"{p}.image_url")
            work.append(("image", data, {}))
        elif kind == "input_audio":
            if part.get("audio") is not None:          # raw PCM16 at the session rate
                data = decode_base64(part.get("audio"), f"{p}.audio", "invalid_audio", lim.max_file_bytes, f"{p}.audio")
                work.append(("pcm", pcm16_samples(data, f"{p}.audio"), None))
            else:
                data = decode_base64(part.get("audio_url"), f"{p}.audio_url", "invalid_audio", lim.max_file_bytes,
                                     f"{p}.audio_url")
                work.append(("audio_file", data, {}))
        elif kind == "input_video":
            url = part.get("video_url")
            if not isinstance(url, str) or not url.startswith("data:"):
                raise ProtocolError("invalid_video", "video_url must be a base64 data URL", f"{p}.video_url")
            data = decode_base64(url, f"{p}.video_url", "invalid_video", lim.max_file_bytes, f"{p}.video_url")
            meta = {}
            for key in ("start_ms", "end_ms"):
                if part.get(key) is not None:
                    if not _is_int(part[key]) or part[key] < 0:
                        raise ProtocolError("invalid_value", f"{p}.{key} must be a non-negative integer", f"{p}.{key}")
                    meta[key] = part[key]
            meta["fps"] = s.omni.video_fps
            work.append(("video_file", data, meta))
        else:
            raise ProtocolError("invalid_value", f"{p}: unknown content type {str(kind)[:40]!r} (input_text, "
                                                 "input_image, input_audio, input_video)", f"{p}.type")
    media_kinds = {k for k, _, _ in work if k != "text"}
    if media_kinds & {"image", "video_file"} and conn.hub.capabilities.get("vision") is False:
        raise ProtocolError("invalid_image", "this model has no vision encoder: it takes no images or video")
    if media_kinds & {"pcm", "audio_file"} and conn.hub.capabilities.get("audio") is False:
        raise ProtocolError("invalid_audio", "this model has no audio encoder: it takes no audio")
    item_id = item.get("id") if isinstance(item.get("id"), str) and len(item["id"]) <= 64 else _id("item")
    await conn.send({"type": "conversation.item.added", "previous_item_id": s.last_item,
                     "item": {**s._user_item(item_id, content_summary(content)), "role": role,
                              "status": "in_progress" if media_kinds else "completed"}})
    s.last_item = item_id
    for kind, data, meta in work:
        if kind == "text":
            if role == "system":
                s.extra_instructions = "\n".join(x for x in (s.extra_instructions, data) if x)
            else:
                s.pending_text.append(data)
        elif kind == "pcm":
            await s.append_audio(data)
        else:
            await s.submit(Media(s.id, kind, data, {**meta, "item_id": item_id, "t_ms": s.clock_ms()}))
    if not media_kinds:
        await conn.send({"type": "conversation.item.done", "item": {**s._user_item(item_id, content_summary(content)),
                                                                    "role": role}})


def content_summary(content: list) -> list:
    """Item content as echoed back: text kept, media payloads left out."""
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        out.append({"type": kind, "text": part.get("text")} if kind in ("input_text", "text") else {"type": kind})
    return out


async def _response_create(conn: RealtimeConnection, event: dict) -> None:
    await conn.session.start_response(event.get("response") or {}, event.get("event_id"))


async def _response_cancel(conn: RealtimeConnection, event: dict) -> None:
    await conn.session.cancel_response(event.get("response_id"))


HANDLERS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _audio_append,
    "input_audio_buffer.commit": _audio_commit,
    "input_audio_buffer.clear": _audio_clear,
    "input_image_buffer.append": _image_append,
    "conversation.item.create": _item_create,
    "response.create": _response_create,
    "response.cancel": _response_cancel,
}


# ---- the hub: every session of the server --------------------------------------------------------------

class RealtimeHub:
    def __init__(self, engine, pool, tokenizer, *, model_name: str, limits: Limits | None = None,
                 capabilities: dict | None = None, vad_kind: str = "auto", evs_rate: float = 0.0,
                 api_key: str | None = None):
        self.engine, self.pool, self.tokenizer = engine, pool, tokenizer
        self.model_name, self.limits = model_name, limits or Limits()
        self.capabilities = capabilities or {}
        self.vad_kind, self.evs_rate, self.api_key = vad_kind, evs_rate, api_key
        self.sessions: dict[str, RealtimeSession] = {}
        self._reaper: asyncio.Task | None = None

    async def handle(self, ws) -> None:
        """Serve one WebSocket (a Starlette WebSocket) from handshake to close."""
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        key = None
        auth = ws.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        for p in offered:
            if p.startswith("openai-insecure-api-key."):
                key = p[len("openai-insecure-api-key."):]
        chosen = "realtime" if "realtime" in offered else None
        await ws.accept(subprotocol=chosen)
        if self.api_key and not (key and hmac.compare_digest(key.encode(), self.api_key.encode())):
            await ws.send_text(json.dumps({**error_event("unauthorized", "missing or wrong API key (send it as "
                                                         "Authorization: Bearer KEY or the subprotocol "
                                                         "openai-insecure-api-key.KEY)", type_="authentication_error"),
                                           "event_id": _id("event")}))
            await ws.close(1008, "unauthorized")
            return
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        q = ws.query_params
        resumed = False
        if q.get("session_id"):
            s = self.sessions.get(q["session_id"])
            token = q.get("resume_token", "")
            if s is None or not hmac.compare_digest(token.encode(), s.token.encode()):
                await ws.send_text(json.dumps({**error_event("session_not_found", "no session with that id and resume "
                                                             "token (it may have expired)", "session_id"),
                                               "event_id": _id("event")}))
                await ws.close(1008, "unknown session")
                return
            if s.conn is not None:
                await s.conn.close(1000, "resumed elsewhere")
            resumed = True
        else:
            if len(self.sessions) >= self.limits.max_sessions:
                await ws.send_text(json.dumps({**error_event("session_limit", f"the server holds its maximum of "
                                                             f"{self.limits.max_sessions} sessions; try again later",
                                                             type_="server_error"), "event_id": _id("event")}))
                await ws.close(1013, "too many sessions")
                return
            s = RealtimeSession(self)
            self.sessions[s.id] = s
        conn = RealtimeConnection(self, ws, s)
        s.conn, s.detached_at = conn, None
        await conn.send({"type": "session.created", "session": {**s.describe(), "resumed": resumed}})
        try:
            await conn.run()
        finally:
            if s.conn is conn:
                s.conn, s.detached_at = None, time.monotonic()
                if self.limits.resume_grace_s <= 0:
                    await s.destroy()

    async def _reap(self) -> None:
        """Free sessions whose client has not come back within the grace period."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.limits.resume_grace_s / 4)))
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if s.conn is None and s.detached_at is not None and now - s.detached_at >= self.limits.resume_grace_s:
                    await s.destroy()

    async def shutdown(self, notice_s: float = 0.5) -> None:
        """Tell every client the server is going away, then free every session."""
        for s in list(self.sessions.values()):
            if s.conn is not None:
                await s.conn.send({"type": "session.going_away", "reason": "shutdown",
                                   "time_left_ms": int(notice_s * 1000)})
        await asyncio.sleep(notice_s)
        for s in list(self.sessions.values()):
            if s.conn is not None:
                await s.conn.close(1001, "server shutdown")
            await s.destroy()
        if self._reaper is not None:
            self._reaper.cancel()
