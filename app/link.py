"""The internal embedding link between the encoder service and the decoder service.

Three message types cross it, the same objects in-process and over the wire:

    EmbeddingChunk  encoder -> decoder: one chunk of a session's projected embeddings
    Media           decoder -> encoder: raw media of a session (PCM samples, a frame, a file)
    Control         either way: session lifecycle and reports (open, flush, flushed, progress, error ...)

Wire format (one binary WebSocket frame per message, compression off, little-endian):

    u8 kind (1 chunk, 2 media, 3 control) | u32 header length | JSON header | payload bytes

A chunk's header holds session, modality, t0, t1, label, seq, dtype and shape; its payload is
the raw tensor (fp32, bf16 or fp16). Every size is checked against `LinkLimits` before anything
is allocated. `queue_link` joins two ends through bounded asyncio queues (the single-process
deployment); `serve_link` / `connect_link` do it over the `websockets` library. `EncoderPool` is
the decoder's side: it assigns sessions to connected encoders, forwards their media in order,
and hands arriving chunks and reports to the engine and the sessions.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import torch

from fusion.stream import EmbeddingChunk

KIND_CHUNK, KIND_MEDIA, KIND_CONTROL = 1, 2, 3
_PREFIX = struct.Struct("<BI")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MEDIA_KINDS = ("audio", "frame", "image", "audio_file", "video_file")

assert sys.byteorder == "little", "the link format is little-endian; this host is not"


class LinkError(ValueError):
    """A link frame that breaks the format or the limits."""


class LinkClosed(Exception):
    """The other end went away."""


@dataclass
class LinkLimits:
    max_frame_bytes: int = 64 << 20      # one message, header and payload
    max_header_bytes: int = 64 << 10
    max_tokens: int = 1 << 20            # rows of one chunk
    max_width: int = 1 << 16             # columns of one chunk
    max_label_chars: int = 4096
    max_id_chars: int = 128


@dataclass
class Media:
    """Raw media of one session on its way to an encoder. `meta` holds what the kind needs
    (`t_ms` of a frame, `item_id` of a file, ...); `data` is the bytes (audio: float32 16 kHz)."""
    session: str
    kind: str
    data: bytes
    meta: dict = field(default_factory=dict)


@dataclass
class Control:
    """A lifecycle message or report of one session ("" for the link itself)."""
    session: str
    type: str
    data: dict = field(default_factory=dict)


Message = EmbeddingChunk | Media | Control


# ---- framing ---------------------------------------------------------------------------------------

def _frame(kind: int, header: dict, payload: bytes | memoryview = b"") -> bytes:
    h = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return b"".join((_PREFIX.pack(kind, len(h)), h, payload))


def pack(msg: Message) -> bytes:
    """One message as a link frame."""
    if isinstance(msg, EmbeddingChunk):
        t = msg.embeds.detach().to("cpu").contiguous()
        if t.dtype not in DTYPE_NAMES:
            t = t.float()
        header = {"session": msg.session, "modality": msg.modality, "t0": msg.t0, "t1": msg.t1,
                  "label": msg.label, "seq": msg.seq, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)}
        return _frame(KIND_CHUNK, header, t.view(torch.uint8).numpy().tobytes())
    if isinstance(msg, Media):
        return _frame(KIND_MEDIA, {"session": msg.session, "kind": msg.kind, "meta": msg.meta}, msg.data)
    if isinstance(msg, Control):
        return _frame(KIND_CONTROL, {"session": msg.session, "type": msg.type, "data": msg.data})
    raise TypeError(f"not a link message: {type(msg).__name__}")


def _field(header: dict, name: str, kind, limit: int | None = None):
    v = header.get(name)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise LinkError(f"link frame: header field {name!r} must be {getattr(kind, '__name__', kind)}, got {v!r:.80}")
    if limit is not None and len(v) > limit:
        raise LinkError(f"link frame: header field {name!r} is {len(v)} long, over the limit of {limit}")
    return v


def unpack(frame: bytes, limits: LinkLimits = LinkLimits()) -> Message:
    """A link frame back into its message; LinkError if it breaks the format or the limits."""
    if not isinstance(frame, (bytes, bytearray)):
        raise LinkError("link frame: expected a binary frame")
    if len(frame) > limits.max_frame_bytes:
        raise LinkError(f"link frame: {len(frame)} bytes, over the limit of {limits.max_frame_bytes}")
    if len(frame) < _PREFIX.size:
        raise LinkError(f"link frame: {len(frame)} bytes, shorter than its {_PREFIX.size}-byte prefix")
    kind, hlen = _PREFIX.unpack_from(frame)
    if kind not in (KIND_CHUNK, KIND_MEDIA, KIND_CONTROL):
        raise LinkError(f"link frame: unknown kind {kind} (1 chunk, 2 media, 3 control)")
    if hlen > limits.max_header_bytes or _PREFIX.size + hlen > len(frame):
        raise LinkError(f"link frame: header length {hlen} does not fit the frame or the limit")
    try:
        header = json.loads(bytes(frame[_PREFIX.size:_PREFIX.size + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LinkError(f"link frame: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise LinkError("link frame: header must be a JSON object")
    payload = memoryview(frame)[_PREFIX.size + hlen:]
    session = _field(header, "session", str, limits.max_id_chars)
    if kind == KIND_CONTROL:
        if len(payload):
            raise LinkError("link frame: a control message carries no payload")
        return Control(session, _field(header, "type", str, 64), _field(header, "data", dict))
    if kind == KIND_MEDIA:
        media_kind = _field(header, "kind", str, 32)
        if media_kind not in MEDIA_KINDS:
            raise LinkError(f"link frame: unknown media kind {media_kind!r} (expected one of {MEDIA_KINDS})")
        return Media(session, media_kind, bytes(payload), _field(header, "meta", dict))
    dtype = DTYPES.get(_field(header, "dtype", str, 16))
    if dtype is None:
        raise LinkError(f"link frame: dtype {header['dtype']!r} is not one of {sorted(DTYPES)}")
    shape = _field(header, "shape", list)
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise LinkError(f"link frame: shape must be two non-negative integers, got {shape!r:.80}")
    if shape[0] > limits.max_tokens or shape[1] > limits.max_width:
        raise LinkError(f"link frame: shape {shape} exceeds the limits ({limits.max_tokens} x {limits.max_width})")
    size = shape[0] * shape[1] * torch.empty(0, dtype=dtype).element_size()
    if size != len(payload):
        raise LinkError(f"link frame: shape {shape} of {header['dtype']} needs {size} bytes, the payload has {len(payload)}")
    t0, t1 = (float(_field(header, k, (int, float))) for k in ("t0", "t1"))
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise LinkError("link frame: t0 and t1 must be finite")
    seq = _field(header, "seq", int)
    embeds = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype).view(*shape) if size else \
        torch.empty(*shape, dtype=dtype)
    try:
        return EmbeddingChunk(session, _field(header, "modality", str, 16), t0, t1,
                              _field(header, "label", str, limits.max_label_chars), embeds, seq)
    except ValueError as e:
        raise LinkError(f"link frame: {e}") from None


# ---- transports ------------------------------------------------------------------------------------

_CLOSED = object()


class QueueEnd:
    """One end of an in-process link: messages move as objects through bounded queues."""

    def __init__(self, inbox: asyncio.Queue, outbox: asyncio.Queue, name: str = "in-process"):
        self.inbox, self.outbox, self.name = inbox, outbox, name
        self.closed = False

    async def send(self, msg: Message) -> None:
        if self.closed:
            raise LinkClosed("link closed")
        await self.outbox.put(msg)

    async def recv(self) -> Message:
        msg = await self.inbox.get()
        if msg is _CLOSED:
            self.closed = True
            raise LinkClosed("link closed by the other end")
        return msg

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.outbox.put_nowait(_CLOSED)
            except asyncio.QueueFull:     # the reader is stuck behind a full queue: make room
                self.outbox.get_nowait()
                self.outbox.put_nowait(_CLOSED)


def queue_link(maxsize: int = 64) -> tuple[QueueEnd, QueueEnd]:
    """Two connected ends (decoder side, encoder side) with `maxsize` messages in flight each way."""
    a, b = asyncio.Queue(maxsize), asyncio.Queue(maxsize)
    return QueueEnd(a, b, "decoder"), QueueEnd(b, a, "encoder")


class WebSocketEnd:
    """One end of a link over a `websockets` connection: one binary frame per message."""

    def __init__(self, ws, limits: LinkLimits = LinkLimits(), name: str = "websocket"):
        self.ws, self.limits, self.name = ws, limits, name
        self.bytes_sent = self.bytes_received = 0

    async def send(self, msg: Message) -> None:
        from websockets.exceptions import ConnectionClosed
        data = pack(msg)
        try:
            await self.ws.send(data)
        except ConnectionClosed as e:
            raise LinkClosed(str(e)) from None
        self.bytes_sent += len(data)

    async def recv(self) -> Message:
        from websockets.exceptions import ConnectionClosed
        try:
            data = await self.ws.recv()
        except ConnectionClosed as e:
            raise LinkClosed(str(e)) from None
        if isinstance(data, str):
            raise LinkError("link frame: a text frame; the link speaks binary frames only")
        self.bytes_received += len(data)
        return unpack(data, self.limits)

    async def close(self) -> None:
        await self.ws.close()


def _bearer(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def serve_link(on_connect: Callable[[WebSocketEnd], Awaitable[None]], host: str, port: int,
                     limits: LinkLimits = LinkLimits(), api_key: str | None = None):
    """A websockets server for encoders; `on_connect(end)` runs for each one until it leaves.
    With `api_key` an encoder must send it as `Authorization: Bearer`."""
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    def check(conn, request):
        if not api_key:
            return None
        got = request.headers.get("Authorization", "")
        if hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
            return None
        return Response(401, "Unauthorized", Headers({"Content-Type": "text/plain"}), b"missing or wrong API key\n")

    async def handler(ws):
        await on_connect(WebSocketEnd(ws, limits, name=f"{ws.remote_address}"))

    return await serve(handler, host, port, compression=None, max_size=limits.max_frame_bytes, max_queue=16,
                       process_request=check, ping_interval=10, ping_timeout=20)


async def connect_link(url: str, limits: LinkLimits = LinkLimits(), api_key: str | None = None) -> WebSocketEnd:
    from websockets.asyncio.client import connect
    ws = await connect(url, compression=None, max_size=limits.max_frame_bytes, max_queue=16,
                       additional_headers=_bearer(api_key), open_timeout=10, ping_interval=10, ping_timeout=20)
    return WebSocketEnd(ws, limits, name=url)


# ---- the decoder's side: sessions spread over connected encoders ------------------------------------

class SessionSink:
    """What the pool tells a session (implemented by app/realtime.py and app/openai_compat.py)."""

    async def encoder_event(self, msg: Control) -> None: ...


@dataclass
class _Feed:
    """A session's media on its way to its encoder, in order. Frames beyond `max_frames` drop
    the oldest frame (reported); audio beyond `max_audio_s` is refused (an error, never silent)."""
    session: str
    open_msg: Control
    sink: SessionSink
    encoder: str | None = None
    queue: collections.deque = field(default_factory=collections.deque)
    frames: int = 0
    audio_samples: int = 0
    dropped_frames: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    needs_open: bool = True


class PoolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class EncoderPool:
    """The decoder's view of its encoders: which encoder serves which session, and the ordered,
    bounded path of each session's media to it. A session keeps its encoder by name: when that
    encoder drops, the session gets an error and waits; when an encoder of that name connects
    again, the session is opened there again and its stream goes on (another connected encoder
    takes it over if its own is missing when new media arrives)."""

    def __init__(self, engine, max_frames: int = 8, max_audio_s: float = 10.0):
        self.engine = engine
        self.max_frames, self.max_audio_samples = max_frames, int(max_audio_s * 16000)
        self.links: dict[str, object] = {}
        self.feeds: dict[str, _Feed] = {}
        self.chunks_received = 0
        self.connected = asyncio.Event()

    # -- encoders ------------------------------------------------------------------------------------
    async def serve(self, end) -> None:
        """Run one encoder connection until it closes: hello, then its chunks and reports."""
        try:
            hello = await asyncio.wait_for(end.recv(), 30)
        except (LinkClosed, LinkError, asyncio.TimeoutError):
            await end.close()
            return
        if not isinstance(hello, Control) or hello.type != "hello" or not isinstance(hello.data.get("name"), str):
            await end.send(Control("", "error", {"code": "protocol", "message": "the first message must be hello"}))
            await end.close()
            return
        name = hello.data["name"][:64]
        if name in self.links:
            await end.send(Control("", "error", {"code": "duplicate", "message": f"encoder {name!r} is already connected"}))
            await end.close()
            return
        self.links[name] = end
        self.connected.set()
        for feed in self.feeds.values():        # its sessions resume
            if feed.encoder == name:
                feed.needs_open = True
                feed.wake.set()
        try:
            while True:
                msg = await end.recv()
                await self._arrived(name, msg)
        except (LinkClosed, LinkError, OSError):
            pass
        finally:
            if self.links.get(name) is end:
                del self.links[name]
            if not self.links:
                self.connected.clear()
            for feed in list(self.feeds.values()):
                if feed.encoder == name:
                    lost = len(feed.queue)
                    feed.queue.clear()
                    feed.frames = feed.audio_samples = 0
                    feed.needs_open = True
                    await feed.sink.encoder_event(Control(feed.session, "error", {
                        "code": "encoder_unavailable",
                        "message": f"the encoder service {name!r} went away; {lost} queued media message(s) were "
                                   "lost; the stream resumes when an encoder is back"}))

    async def _arrived(self, name: str, msg) -> None:
        feed = self.feeds.get(msg.session)
        if isinstance(msg, EmbeddingChunk):
            if feed is None or feed.encoder != name:
                return                           # a session closed meanwhile
            self.chunks_received += 1
            await self.engine.append(msg.session, msg)
        elif isinstance(msg, Control) and feed is not None:
            await feed.sink.encoder_event(msg)   # in order: after the chunks before it are queued

    # -- sessions ------------------------------------------------------------------------------------
    def open(self, session: str, config: dict, sink: SessionSink) -> None:
        feed = _Feed(session, Control(session, "open", config), sink)
        self.feeds[session] = feed
        feed.task = asyncio.get_running_loop().create_task(self._pump(feed))

    def configure(self, session: str, config: dict) -> None:
        feed = self.feeds[session]
        feed.open_msg.data.update(config)
        self._enqueue(feed, Control(session, "configure", config))

    async def close(self, session: str) -> None:
        feed = self.feeds.pop(session, None)
        if feed is None:
            return
        feed.task.cancel()
        end = self.links.get(feed.encoder)
        if end is not None:
            try:
                await end.send(Control(session, "close"))
            except (LinkClosed, OSError):
                pass

    def submit(self, session: str, msg: Message) -> int:
        """Queue media or a control message for the session's encoder; returns frames dropped.
        Raises PoolError when no encoder is connected or the audio backlog is full."""
        feed = self.feeds[session]
        if feed.encoder not in self.links and not self._assign(feed):
            raise PoolError("encoder_unavailable", "no encoder service is connected; media cannot be encoded now")
        dropped = 0
        if isinstance(msg, Media) and msg.kind == "audio":
            n = len(msg.data) // 4
            if feed.audio_samples + n > self.max_audio_samples:
                raise PoolError("input_audio_buffer_overflow",
                                f"the encoder is {feed.audio_samples / 16000:.1f} s behind this stream's audio, over "
                                f"the limit of {self.max_audio_samples / 16000:.1f} s: this audio was not accepted")
            feed.audio_samples += n
        if isinstance(msg, Media) and msg.kind == "frame":
            while feed.frames >= self.max_frames:       # live video: the oldest frame goes
                for i, old in enumerate(feed.queue):
                    if isinstance(old, Media) and old.kind == "frame":
                        del feed.queue[i]
                        feed.frames -= 1
                        dropped += 1
                        break
            feed.frames += 1
        feed.dropped_frames += dropped
        self._enqueue(feed, msg)
        return dropped

    def _enqueue(self, feed: _Feed, msg) -> None:
        feed.queue.append(msg)
        feed.wake.set()

    def _assign(self, feed: _Feed) -> bool:
        if not self.links:
            return False
        load = collections.Counter(f.encoder for f in self.feeds.values())
        feed.encoder = min(self.links, key=lambda n: (load[n], n))
        feed.needs_open = True
        feed.wake.set()
        return True

    async def _pump(self, feed: _Feed) -> None:
        """Send the session's queue to its encoder, in order; waits while it has none."""
        while True:
            await feed.wake.wait()
            feed.wake.clear()
            while True:
                end = self.links.get(feed.encoder)
                if end is None:
                    break
                try:
                    if feed.needs_open:
                        feed.needs_open = False
                        await end.send(feed.open_msg)
                    if not feed.queue:
                        break
                    msg = feed.queue.popleft()
                    if isinstance(msg, Media) and msg.kind == "frame":
                        feed.frames -= 1
                    if isinstance(msg, Media) and msg.kind == "audio":
                        feed.audio_samples -= len(msg.data) // 4
                    await end.send(msg)
                except (LinkClosed, OSError):
                    break                      # serve() reports the loss

    def stats(self) -> dict:
        return {"encoders": sorted(self.links), "sessions": len(self.feeds), "chunks_received": self.chunks_received}


def check_key(got: str | None, api_key: str | None) -> bool:
    """Constant-time comparison of a presented key with the configured one (None: no key needed)."""
    if not api_key:
        return True
    return got is not None and hmac.compare_digest(got.encode(), api_key.encode())
