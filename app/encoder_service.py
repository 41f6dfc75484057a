"""The encoder service: media in, `EmbeddingChunk`s out, for many sessions at once.

It reads `Media` and `Control` messages from a link (app/link.py), runs the towers in its own
worker thread, and sends back each chunk as soon as it is encoded, with the session, modality
and media time span:

    live audio      float32 16 kHz samples -> AudioStream clips of `clip_s` seconds, each labelled
                    with its span (fusion.stream.audio_chunk_label)
    camera frames   JPEG / PNG on the session clock -> tubelets of `temporal_patch` frames
                    -> vision tower -> causal EVS (EvsStream)
    files           an image, an audio file, a video (with its audio track): decoded and encoded
                    piece by piece, with `progress` reports, its chunks in time order

Per session it keeps only what streaming needs: the audio carry-over of the current clip, the
frames of an incomplete tubelet, the last tubelet for EVS, chunk numbers. A `flush` control
encodes what is held (a question is coming) and answers `flushed`. Uploaded bytes go to files
the service names itself in its own temporary folder, never to a path a client gave.

Run standalone with `python -m app encoder --connect ws://HOST:PORT` (it reconnects, with
backoff, when the decoder goes away), or in-process next to the decoder.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import torch

from fusion.stream import ChunkMerger, EmbeddingChunk, EvsStream, audio_chunk_label

from .link import Control, LinkClosed, LinkError, Media, connect_link

ERROR_CODES = {"image": "invalid_image", "frame": "invalid_image", "audio": "invalid_audio",
               "audio_file": "invalid_audio", "video_file": "invalid_video"}


def frame_label(numbers: list[int], times: list[float]) -> str:
    """The text before a live tubelet, in the reference's words (fusion.prompt.video_frame_labels)
    but on the session clock and with frame numbers that keep counting over the stream."""
    parts = [f"{'Frame' if k == 0 else 'frame'} {n} sampled at {t:.2f} seconds"
             for k, (n, t) in enumerate(zip(numbers, times))]
    return " and ".join(parts) + ": "


def tubelet_chunks(vision, frames, temporal_patch: int = 2, evs_rate: float = 0.0, session: str = "",
                   batch: int = 1):
    """(time s, uint8 [H, W, 3]) frames -> one EmbeddingChunk per tubelet of `temporal_patch`
    frames, labelled with its frame numbers and times (frame_label), with EVS applied causally
    tubelet by tubelet (EvsStream). `batch` tubelets go through the vision tower at once; a short
    last tubelet has its last frame repeated by the tower."""
    evs = EvsStream(evs_rate)
    seq = 0

    def encode(group):          # group: tubelets, each a list of (time, frame)
        nonlocal seq
        flat = [f for tub in group for _, f in tub]
        if any(f.shape != flat[0].shape for f in flat):
            raise ValueError("video: frames change size; resolution changes are not supported")
        emb = vision.encode_video(torch.stack(flat))                       # (len(group), n, D)
        for tub, e in zip(group, emb):
            keep = evs.keep_mask(e[None])[0]
            times = [t for t, _ in tub]
            first = seq * temporal_patch + 1
            yield EmbeddingChunk(session, "video", times[0], times[-1],
                                 frame_label(list(range(first, first + len(tub))), times), e[keep], seq)
            seq += 1

    pending, tubelet = [], []
    for t, frame in frames:
        tubelet.append((t, frame))
        if len(tubelet) == temporal_patch:
            pending.append(tubelet)
            tubelet = []
            if len(pending) == batch:
                yield from encode(pending)
                pending = []
    if pending:
        yield from encode(pending)
    if tubelet:
        yield from encode([tubelet])


def audio_clip_chunks(stream, pieces, session: str = ""):
    """16 kHz mono pieces through an AudioStream (encoders.audio) -> one EmbeddingChunk per clip,
    labelled with its time span (fusion.stream.audio_chunk_label)."""
    def clips():
        for piece in pieces:
            yield from stream.push(piece)
        yield from stream.flush()

    for seq, c in enumerate(clips()):
        yield EmbeddingChunk(session, "audio", c.t0, c.t1, audio_chunk_label(c.t0, c.t1), c.embeddings, seq)


@dataclass
class _Live:
    """One session's streaming state on this encoder."""
    config: dict
    audio: object | None = None                     # AudioStream, made on the first samples
    audio_offset_s: float = 0.0
    frames: list = field(default_factory=list)      # (time_s, uint8 [H, W, 3]) of the open tubelet
    frame_count: int = 0
    evs: EvsStream | None = None
    seq: collections.Counter = field(default_factory=collections.Counter)
    merger: ChunkMerger | None = None
    modalities: tuple = ()


class EncoderService:
    """Turns link messages into chunks and reports. `handle(msg)` is a generator: it yields the
    outgoing messages as they are produced (a long file reports progress on the way)."""

    def __init__(self, vision=None, audio=None, *, temporal_patch: int = 2, evs_rate: float = 0.0,
                 clip_s: float = 2.0, file_fps: float = 2.0, max_file_frames: int = 512, tmp_dir: str | None = None):
        self.vision, self.audio = vision, audio
        self.temporal_patch, self.evs_rate, self.clip_s = temporal_patch, evs_rate, clip_s
        self.file_fps, self.max_file_frames = file_fps, max_file_frames
        self._tmp = tempfile.TemporaryDirectory(prefix="omnistream-enc-", dir=tmp_dir)
        self.sessions: dict[str, _Live] = {}
        self.encode_s = 0.0
        self.chunks_sent = 0

    @classmethod
    def from_omni(cls, omni, **kw) -> "EncoderService":
        return cls(omni.vision, omni.audio, temporal_patch=omni.settings.temporal_patch,
                   evs_rate=omni.settings.video_pruning_rate, **kw)

    def reset(self) -> None:
        """Forget every session (the decoder opens them again after a reconnect)."""
        self.sessions.clear()

    # ---- dispatch ---------------------------------------------------------------------------------
    def handle(self, msg):
        if isinstance(msg, Control):
            yield from self._control(msg)
            return
        if not isinstance(msg, Media):
            yield Control(getattr(msg, "session", ""), "error", {"code": "protocol",
                                                                 "message": f"an encoder takes media, not {type(msg).__name__}"})
            return
        live = self.sessions.get(msg.session)
        if live is None:
            yield Control(msg.session, "error", {"code": "session_not_found",
                                                 "message": "media for a session this encoder has not opened"})
            return
        t = time.perf_counter()
        try:
            if msg.kind == "audio":
                yield from self._live_audio(msg.session, live, msg.data)
            elif msg.kind == "frame":
                yield from self._live_frame(msg.session, live, msg)
            else:
                yield from self._file(msg.session, live, msg)
        except ValueError as e:
            yield Control(msg.session, "error", {"code": ERROR_CODES[msg.kind], "message": self._clean(str(e)),
                                                 "item_id": msg.meta.get("item_id")})
        finally:
            self.encode_s += time.perf_counter() - t

    def _control(self, msg: Control):
        sid = msg.session
        if msg.type == "open":
            self.sessions[sid] = _Live(dict(msg.data), audio_offset_s=float(msg.data.get("audio_s", 0.0)),
                                       frame_count=int(msg.data.get("frames", 0)))
        elif msg.type == "configure" and sid in self.sessions:
            self.sessions[sid].config.update(msg.data)
        elif msg.type == "close":
            self.sessions.pop(sid, None)
        elif msg.type == "flush":
            live = self.sessions.get(sid)
            if live is not None:
                yield from self._flush(sid, live)
            yield Control(sid, "flushed", dict(msg.data))
        else:
            yield Control(sid, "error", {"code": "protocol", "message": f"unknown control {msg.type!r}"})

    def _clean(self, message: str) -> str:
        """Error messages name the upload, not the service's temporary files."""
        return message.replace(self._tmp.name + os.sep, "upload:")

    # ---- chunks in time order ---------------------------------------------------------------------
    def _chunk(self, sid: str, live: _Live, modality: str, t0: float, t1: float, label: str, embeds) -> EmbeddingChunk:
        c = EmbeddingChunk(sid, modality, t0, t1, label, embeds, live.seq[modality])
        live.seq[modality] += 1
        return c

    def _release(self, live: _Live, chunk: EmbeddingChunk):
        """Live chunks of several modalities wait in a ChunkMerger until their turn; its set of
        modalities grows as they start (a new set flushes the old merger first)."""
        if chunk.modality not in live.modalities:
            if live.merger is not None:
                yield from live.merger.flush()
            live.modalities += (chunk.modality,)
            live.merger = ChunkMerger(live.modalities)
        for c in live.merger.push(chunk):
            self.chunks_sent += 1
            yield c

    def _flush(self, sid: str, live: _Live):
        if live.audio is not None:
            for c in live.audio.flush():
                yield from self._release(live, self._audio_chunk(sid, live, c))
        if live.frames:
            yield from self._encode_tubelet(sid, live)
        if live.merger is not None:
            for c in live.merger.flush():
                self.chunks_sent += 1
                yield c

    # ---- live audio -------------------------------------------------------------------------------
    def _audio_chunk(self, sid, live, c) -> EmbeddingChunk:
        t0, t1 = live.audio_offset_s + c.t0, live.audio_offset_s + c.t1
        return self._chunk(sid, live, "audio", t0, t1, audio_chunk_label(t0, t1), c.embeddings)

    def _live_audio(self, sid: str, live: _Live, data: bytes):
        if self.audio is None:
            raise ValueError("this model has no audio tower: it takes no audio")
        if len(data) % 4:
            raise ValueError(f"audio payload of {len(data)} bytes is not float32 samples")
        if live.audio is None:
            from encoders.audio import AudioStream
            live.audio = AudioStream(self.audio, float(live.config.get("clip_s", self.clip_s)))
        samples = torch.from_numpy(np.frombuffer(data, dtype="<f4").copy())
        for c in live.audio.push(samples):
            yield from self._release(live, self._audio_chunk(sid, live, c))

    # ---- live video -------------------------------------------------------------------------------
    def _decode_image(self, data: bytes, name: str) -> torch.Tensor:
        from encoders.media import load_image
        path = os.path.join(self._tmp.name, f"{name}-{uuid.uuid4().hex}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            return load_image(path)
        finally:
            os.unlink(path)

    def _live_frame(self, sid: str, live: _Live, msg: Media):
        if self.vision is None:
            raise ValueError("this model has no vision tower: it takes no images")
        image = self._decode_image(msg.data, "frame")
        t = float(msg.meta.get("t_ms", 0)) / 1000.0
        if live.frames and live.frames[0][1].shape != image.shape:     # a new size starts a new tubelet
            yield from self._encode_tubelet(sid, live)
        live.frames.append((t, image))
        if len(live.frames) == self.temporal_patch:
            yield from self._encode_tubelet(sid, live)

    def _encode_tubelet(self, sid: str, live: _Live):
        times = [t for t, _ in live.frames]
        frames = torch.stack([f for _, f in live.frames])
        numbers = list(range(live.frame_count + 1, live.frame_count + len(times) + 1))
        live.frame_count += len(times)
        live.frames = []
        tubelets = self.vision.encode_video(frames)                        # (1, n, D)
        if live.evs is None:
            live.evs = EvsStream(float(live.config.get("evs_rate", self.evs_rate)))
        keep = live.evs.keep_mask(tubelets)
        chunk = self._chunk(sid, live, "video", times[0], times[-1], frame_label(numbers, times), tubelets[0][keep[0]])
        yield from self._release(live, chunk)

    # ---- files ------------------------------------------------------------------------------------
    def _file(self, sid: str, live: _Live, msg: Media):
        from encoders import media
        item = str(msg.meta.get("item_id", "item"))
        yield from self._flush(sid, live)            # the live stream so far comes first
        path = os.path.join(self._tmp.name, f"upload-{uuid.uuid4().hex}")
        with open(path, "wb") as f:
            f.write(msg.data)
        try:
            if msg.kind == "image":
                if self.vision is None:
                    raise ValueError("this model has no vision tower: it takes no images")
                emb = self.vision.encode_image(media.load_image(path))
                t = float(msg.meta.get("t_ms", 0)) / 1000.0
                yield self._chunk(sid, live, "image", t, t, "", emb)
                yield Control(sid, "item_done", {"item_id": item, "tokens": emb.shape[0], "duration_ms": 0})
                return
            info = media.probe(path)
            if msg.kind == "video_file" and not info.has_video:
                raise ValueError("upload: the file has no video stream")
            if msg.kind == "audio_file" and not info.has_audio:
                raise ValueError("upload: the file has no audio stream")
            total = info.duration or 0.0
            yield from self._encode_file(sid, live, path, msg, info, item, total)
        finally:
            os.unlink(path)

    def _encode_file(self, sid, live, path, msg, info, item, total):
        from encoders import media
        from encoders.audio import AudioStream
        tokens = 0
        order = ChunkMerger(("video", "audio") if msg.kind == "video_file" and info.has_audio and self.audio else
                            ("audio",) if msg.kind == "audio_file" else ("video",))
        want_video = msg.kind == "video_file"
        want_audio = info.has_audio and self.audio is not None and (msg.kind == "audio_file" or msg.meta.get("with_audio", True))
        if want_video and self.vision is None:
            raise ValueError("this model has no vision tower: it takes no video")
        if msg.kind == "audio_file" and self.audio is None:
            raise ValueError("this model has no audio tower: it takes no audio")
        streams = []
        if want_video:
            fps = float(msg.meta.get("fps", self.file_fps))
            frames = media.iter_video_frames(path, fps=fps, max_frames=int(msg.meta.get("max_frames", self.max_file_frames)))
            streams.append(("video", tubelet_chunks(self.vision, frames, self.temporal_patch,
                                                    float(live.config.get("evs_rate", self.evs_rate)), sid)))
        if want_audio:
            # clips of the session's length, each labelled with its span: the streaming layout the
            # default model is trained on (recipes/train, app/evaluate.py)
            stream = AudioStream(self.audio, float(live.config.get("clip_s", self.clip_s)))
            streams.append(("audio", audio_clip_chunks(stream, media.iter_audio(path, chunk_seconds=5.0), sid)))
        # interleave the two producers by media time, report progress as the slower one moves
        done = {m: 0.0 for m, _ in streams}
        active = dict(streams)
        while active:
            m = min(active, key=lambda k: done[k])
            try:
                chunk = next(active[m])
            except StopIteration:
                del active[m]
                done[m] = total
                released = order.close(m)
            else:
                done[m] = max(done[m], chunk.t1)
                released = order.push(chunk)
            for c in released:
                tokens += c.num_tokens
                self.chunks_sent += 1
                yield c
            yield Control(sid, "progress", {"item_id": item, "done_ms": int(1000 * min(done.values())),
                                            "total_ms": int(1000 * total)})
        for c in order.flush():
            tokens += c.num_tokens
            yield c
        yield Control(sid, "item_done", {"item_id": item, "tokens": tokens, "duration_ms": int(1000 * total)})


async def serve_encoder(end, service: EncoderService, executor: concurrent.futures.Executor) -> None:
    """Answer one link's messages until it closes. Encoding runs in `executor` (one thread);
    each outgoing message is sent as it is produced and the worker waits while the link is full."""
    loop = asyncio.get_running_loop()

    def drive(msg):
        for out in service.handle(msg):
            asyncio.run_coroutine_threadsafe(end.send(out), loop).result()

    while True:
        msg = await end.recv()
        await loop.run_in_executor(executor, drive, msg)


async def run_encoder_client(url: str, service: EncoderService, name: str, api_key: str | None = None,
                             retry_s: float = 0.5, max_retry_s: float = 5.0, log=print) -> None:
    """Connect to a decoder's link and serve it; reconnect with backoff whenever it drops."""
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="encoder")
    delay = retry_s
    while True:
        try:
            end = await connect_link(url, api_key=api_key)
        except (OSError, asyncio.TimeoutError) as e:
            log(f"encoder {name}: cannot reach {url} ({e}); retrying in {delay:.1f} s")
            await asyncio.sleep(delay)
            delay = min(max_retry_s, delay * 2)
            continue
        except Exception as e:                    # e.g. the handshake was refused (wrong API key)
            log(f"encoder {name}: {url} refused the link ({e}); retrying in {delay:.1f} s")
            await asyncio.sleep(delay)
            delay = min(max_retry_s, delay * 2)
            continue
        delay = retry_s
        log(f"encoder {name}: connected to {url}")
        try:
            await end.send(Control("", "hello", {"name": name}))
            await serve_encoder(end, service, executor)
        except (LinkClosed, LinkError, OSError) as e:
            log(f"encoder {name}: link closed ({e})")
        service.reset()
        await asyncio.sleep(retry_s)
